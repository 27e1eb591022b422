"""torch.hub entry points, called like the authors' own:

    model = torch.hub.load('<this repository>', 'QualiCLIP')                       # the released weights
    model = torch.hub.load('/path/to/repo', 'QualiCLIP', source='local', weights='qualiclip.pth')
    scores = model(x)   # x: (B,3,H,W) RGB normalised with CLIP's mean and std; scores (B,) in [0,1], higher is better

The model scores images at their native size (no resize, no crop). `model.model` is the underlying
`qualiclip.model.QualiCLIP` (inputs in [0,1], `score`, `export_official`, ...).
"""
import os as _os, sys as _sys

dependencies = ['torch', 'open_clip']

_REPO = _os.path.dirname(_os.path.abspath(__file__))
if _REPO not in _sys.path: _sys.path.insert(0, _REPO)
import qualiclip.model as _qm   # imported now: torch.hub drops the repository from sys.path after loading this file


def _released():
    """The authors' released qualiclip.pth from torch.hub's cache (downloaded once), its SHA-256 checked before use.
    A cached file with no SHA-256 to check it against (placed there by another loader or by hand) is refused, not trusted."""
    return _qm.resolve_weights('released')   # `released_checkpoint`: the one place that fetches and checks it


def _check_batch(module, args):
    "Refuse any input but a (B,3,H,W) batch, with one message saying what is expected (a forward pre-hook)."
    x = args[0] if args else None
    shape = tuple(getattr(x, 'shape', ()))
    if len(shape) == 4 and shape[1] == 3: return None
    hint = (' (channels last? use x.permute(0, 3, 1, 2))' if len(shape) == 4 and shape[-1] == 3 else
            ' (one image? use x[None])' if len(shape) == 3 and shape[0] == 3 else '')
    raise ValueError(f"QualiCLIP expects a batch of RGB images (B,3,H,W) normalised with CLIP's mean and std, got "
                     f"{'shape ' + str(shape) if hasattr(x, 'shape') else type(x).__name__}{hint}.")


def _hub_model(model):
    "The hub convention: `model(x)` on CLIP-normalised (B,3,H,W) batches, in eval mode, other shapes refused clearly."
    m = _qm.ClipNormalisedQualiCLIP(model).eval()
    m.register_forward_pre_hook(_check_batch)
    return m


def _device(device): return 'cpu' if device is None else device


def QualiCLIP(pretrained=True, weights=None, device=None):
    """QualiCLIP (CLIP RN50, position-free attention pool, 7 antonym prompt pairs); `model(x)` takes CLIP-normalised images.

    pretrained: True downloads the authors' released qualiclip.pth once into torch.hub's cache (SHA-256 checked);
        False gives the same architecture with random weights
    weights: a local checkpoint in the official layout (the released file, or one of ours); wins over `pretrained`
    device: where the model lives: None (the CPU), 'cpu', 'cuda', 'auto', ...
    """
    if weights is None and pretrained: weights = _released()
    if weights is None: model = _qm.QualiCLIP(_qm.DEFAULT_BACKBONE).to(_qm.get_device(_device(device)))
    else: model = _qm.QualiCLIP.from_checkpoint(weights, device=_device(device))
    return _hub_model(model)


def QualiCLIP_run(run='runs/demo', device=None):
    """A QualiCLIP model trained by this repository: `run` is a run folder (holding qualiclip.pth) or a checkpoint file.

    run: a path, relative to the repository (or absolute): e.g. 'runs/demo' or 'runs/ablations/no_cons/qualiclip.pth'
    device: where the model lives: None (the CPU), 'cpu', 'cuda', 'auto', ...
    """
    p = run if _os.path.isabs(run) else _os.path.join(_REPO, run)
    if _os.path.isdir(p): p = _os.path.join(p, 'qualiclip.pth')
    if not _os.path.isfile(p):
        raise FileNotFoundError(f"{p}: no trained checkpoint there; train one first (`make repro`, or `qualiclip train`) "
                                "or pass a run folder / .pth file that exists.")
    return QualiCLIP(pretrained=False, weights=p, device=device)


def QualiCLIP_plus(prompts, weights=None, pretrained=True, device=None):
    """QualiCLIP+ (pyiqa's `qualiclip+` score): the frozen QualiCLIP model with learned prompts; `model(x)` takes CLIP-normalised images.

    prompts: a prompts file in pyiqa's layout: ours from `qualiclip fit-prompts` (outputs/prompts/<key>/prompts.pth)
        or pyiqa's QualiCLIP+_<dataset>.pth (downloaded by you)
    weights: the QualiCLIP checkpoint the prompts belong to (official layout); None with pretrained=True: the released one
    pretrained: download the authors' released qualiclip.pth when `weights` is None (as for 'QualiCLIP')
    device: where the model lives: None (the CPU), 'cpu', 'cuda', 'auto', ...
    """
    from qualiclip.prompts import qualiclip_plus_scorer
    if weights is None and pretrained: weights = _released()
    if weights is None: raise ValueError("QualiCLIP_plus needs QualiCLIP weights: pass weights='/path/to/qualiclip.pth' or pretrained=True.")
    return _hub_model(qualiclip_plus_scorer(weights=weights, prompts=prompts, device=_device(device)))
