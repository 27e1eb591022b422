"""Small pipeline steps that `dvc.yaml` calls and that are not library commands.

    python tools/pipeline.py pristine data/pristine            # the demo photos, train/val/test subfolders
    python tools/pipeline.py init --params params.yaml         # the starting weights: clip.pt (plain) + qualiclip.pth (official)
    python tools/pipeline.py ablate no_cons --params params.yaml   # one short training run of the ablation table
    python tools/pipeline.py unpack data/downloads/kadis700k.zip data/kadis700k   # pristine archive -> folder

All settings come from the params file (the `model:`, `train:` and `ablations:` sections), so `dvc.yaml` only names them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("QUALICLIP_ROOT") or Path(__file__).resolve().parent.parent)


def load(params: str) -> dict:
    "The params file as a dict (path relative to the repository root)."
    import yaml
    p = ROOT / params
    if not p.exists(): raise SystemExit(f"{p} not found: run from the repository or pass --params")
    return yaml.safe_load(p.read_text()) or {}


def pristine(out: str) -> int:
    "Write the demo photos of every split into `out/<split>/`."
    from qualiclip.core import write_demo_photos, DEMO_SPLITS
    for s in DEMO_SPLITS: write_demo_photos(ROOT / out / s, s)
    print(f"demo photos -> {out}: " + ", ".join(f"{s} {len(v)}" for s, v in DEMO_SPLITS.items()))
    return 0


def init(params: str) -> int:
    "Build the starting model (seeded) and write it as plain CLIP weights and in the official QualiCLIP layout."
    import torch
    from qualiclip.core import atomic_path, seed_everything
    from qualiclip.model import QualiCLIP
    p = load(params)
    m, seed = p["model"], int(p.get("seed", 0))
    seed_everything(seed)
    pre = m.get("pretrained")
    model = QualiCLIP(m["backbone"], pretrained=None if pre in (None, "none") else pre)
    out = ROOT / m["init_dir"]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "clip.pt") as t: torch.save(model.clip.state_dict(), t)
    model.export_official(out / "qualiclip.pth")
    print(f"starting weights ({m['backbone']}, pretrained={pre}, seed={seed}) -> {out}/clip.pt, qualiclip.pth")
    return 0


def unpack(archive: str, dest: str) -> int:
    "Unpack a pristine-image archive safely so that `dest` holds its contents (the archive's top folder removed)."
    import shutil
    from qualiclip.core import atomic_path
    from qualiclip.datasets import safe_extract
    a, d = ROOT / archive, ROOT / dest
    if not a.exists(): raise SystemExit(f"{a} not found: fetch it first (dvc update data.dvc)")
    with atomic_path(d) as tmp:
        top = safe_extract(a, tmp)
        if len(top) == 1 and (tmp / top[0]).is_dir() and top[0] == d.name:  # kadis700k.zip holds kadis700k/...
            inner = tmp / top[0]
            for x in inner.iterdir(): shutil.move(str(x), tmp / x.name)
            inner.rmdir()
    print(f"{archive} -> {dest}")
    return 0


def ablate(name: str, params: str) -> int:
    "Train one ablation: the profile's `train:` recipe, the `ablations.<name>` overrides, out runs/ablations/<name>."
    from qualiclip.train import TrainConfig, train
    p = load(params)
    abl = p.get("ablations") or {}
    if name not in abl: raise SystemExit(f"{params}: no ablations.{name}; known: {sorted(abl)}")
    over = dict(abl[name] or {})
    out = over.pop("out", f"{p.get('ablations_dir', 'runs/ablations')}/{name}")
    cfg = TrainConfig.from_params(p["train"], **over, out=str(ROOT / out))
    m = train(cfg, resume=(Path(cfg.out) / "checkpoint.pt").exists())  # an interrupted run continues
    print(f"ablation {name}: " + ", ".join(f"{k}={m[k]}" for k in ("step", "val_srcc") if k in m))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pristine", help=pristine.__doc__); a.add_argument("out")
    a = sub.add_parser("init", help=init.__doc__); a.add_argument("--params", default="params.yaml")
    a = sub.add_parser("ablate", help=ablate.__doc__); a.add_argument("name"); a.add_argument("--params", default="params.yaml")
    a = sub.add_parser("unpack", help=unpack.__doc__); a.add_argument("archive"); a.add_argument("dest")
    a = ap.parse_args(argv)
    if a.cmd == "pristine": return pristine(a.out)
    if a.cmd == "init": return init(a.params)
    if a.cmd == "unpack": return unpack(a.archive, a.dest)
    return ablate(a.name, a.params)


if __name__ == "__main__":
    sys.exit(main())
