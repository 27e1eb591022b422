__version__ = "0.1.0"

def __getattr__(name):
    "Lazy top-level access to the model class (`qualiclip.QualiCLIP`) without importing open_clip on `import qualiclip`."
    if name == 'QualiCLIP':
        from .model import QualiCLIP
        return QualiCLIP
    raise AttributeError(f"module 'qualiclip' has no attribute {name!r}")
