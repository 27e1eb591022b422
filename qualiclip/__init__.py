__version__ = "0.1.0"

import os as _os
if _os.environ.get('QUALICLIP_TRACE'):   # record which modules' code each command runs (the stage-dependency test)
    from .core import start_trace as _start_trace
    _start_trace(_os.environ['QUALICLIP_TRACE'])

_LAZY = {'QualiCLIP': 'model', 'create_metric': 'api', 'list_models': 'api'}   # imported on first use: `import qualiclip` stays light

def __getattr__(name):
    "Lazy top-level access to `qualiclip.QualiCLIP`, `qualiclip.create_metric` and `qualiclip.list_models` without importing open_clip on `import qualiclip`."
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
    raise AttributeError(f"module 'qualiclip' has no attribute {name!r}")

def __dir__(): return sorted([*globals(), *_LAZY])
