"""Run one paper notebook of `nbs/paper/` with papermill, its parameters taken from a section of params.yaml.

    python tools/paper.py T1_opinion_unaware            # parameters: params.yaml -> paper -> T1_opinion_unaware
    python tools/paper.py F2_gradcam --params params/paper.yaml

The executed notebook (with the tables and figures) is written to outputs/notebooks/<name>.ipynb. This is what the
DVC stages call: `dvc.yaml` cannot put lists into a command line, papermill's `-p` cannot take them either, so the
section is passed as papermill parameters from Python (the same as `papermill -k python3 IN OUT -p k v ...`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(os.environ.get("QUALICLIP_ROOT") or Path(__file__).resolve().parent.parent)


def section(params: Path, name: str) -> dict:
    "The `paper.<name>` section of a params file (a clear error when missing)."
    d = yaml.safe_load(params.read_text()) or {}
    sec = (d.get("paper") or {}).get(name)
    if sec is None: raise SystemExit(f"{params}: no section paper.{name}; add it (see params.yaml)")
    return sec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="notebook name in nbs/paper without .ipynb, e.g. T1_opinion_unaware")
    ap.add_argument("--params", default="params.yaml", help="params file (relative to the repository root)")
    ap.add_argument("--out", default="outputs/notebooks", help="folder of the executed notebooks")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    a = ap.parse_args(argv)
    import papermill as pm

    src = ROOT / "nbs" / "paper" / f"{a.name}.ipynb"
    if not src.exists(): raise SystemExit(f"{src} does not exist: the paper notebooks are {sorted(p.stem for p in src.parent.glob('*.ipynb'))}")
    pars = section(ROOT / a.params, a.name)
    out = ROOT / a.out / f"{a.name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    pm.execute_notebook(str(src), str(out), parameters=pars, kernel_name=a.kernel, cwd=str(ROOT), progress_bar=False)
    print(f"{a.name}: executed -> {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
