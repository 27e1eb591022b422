"""Build the documentation site from the notebooks into `_docs/`.

With Quarto on PATH this is plain `nbdev_docs`. Without it (the usual case on build machines), nbdev's own
notebook processing (`nbdev.serve_drv.exec_nb` with `nbdev.processors.FilterDefaults`, what `nbdev_docs` runs
before Quarto: `#| hide`, `#| export` -> `show_doc`, frontmatter, ...) writes processed notebooks to `_proc/`, which are then turned into a mkdocs-material site by mkdocs-jupyter. The site
works offline: no web fonts, no CDN scripts.

Usage: python tools/build_docs.py [--only NAME ...] [--no-results] [--clean] [--strict] [--quarto auto|never|always]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(os.environ.get("QUALICLIP_ROOT") or Path(__file__).resolve().parent.parent)
PROC = ROOT / "_proc"
SRC = PROC / "_mkdocs" / "docs"
GEN_CFG = PROC / "_mkdocs" / "mkdocs.yml"
SITE = ROOT / "_docs"
SKIP_FOLDER_RE = r"^[_.]|^paper$"  # papermill notebooks are run by `dvc repro`, their results shown on one page

_DIRECTIVE = re.compile(r"^\s*#\|.*$\n?", re.MULTILINE)
_PANDOC_ATTR = re.compile(r"(\]\([^)\s]+\))\{[^}\n]*\}")  # Quarto link attributes: [source](url){target=...}


def _md(text: str) -> str:
    "Markdown as Python-Markdown reads it: Quarto link attributes and `:::` div fences removed."
    text = _PANDOC_ATTR.sub(r"\1", text)
    return "\n".join(l for l in text.splitlines() if not l.strip().startswith(":::"))


def settings() -> dict:
    "The `[DEFAULT]` section of settings.ini."
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    return dict(cfg["DEFAULT"])


def run_quarto() -> int:
    "Build with `nbdev_docs` (Quarto) into `_docs/`."
    exe = Path(sys.executable).parent / "nbdev_docs"
    return subprocess.call([str(exe) if exe.exists() else "nbdev_docs"], cwd=ROOT)


class _NoExec:
    "nbdev's docs processors without executing any cell (fallback for a notebook whose cells fail out of order)."
    def __init__(self):
        from nbdev.processors import FilterDefaults
        self.f = FilterDefaults()

    def __call__(self, nb):
        from nbdev.process import NBProcessor
        procs = [p for p in self.f.procs() if getattr(p, "__name__", "") != "exec_show_docs"]
        return NBProcessor(nb=nb, procs=procs).process()


def process_notebooks(only: list[str] | None = None, strict: bool = False) -> Path:
    """Run nbdev's docs processors (`nbdev.serve_drv.exec_nb` with `FilterDefaults`, as `nbdev_docs` does) over `nbs/`
    into `_proc/`, one notebook at a time, skipping notebooks unchanged since their last processing. A notebook whose
    `show_doc`/import cells fail is processed again without execution (its API signatures are then missing) and
    reported; with `strict` the build fails instead."""
    os.chdir(ROOT)
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    from nbdev.processors import FilterDefaults
    from nbdev.serve_drv import exec_nb

    nbs = Path(get_config().nbs_path)
    files = [Path(f) for f in nbglob(nbs, skip_folder_re=SKIP_FOLDER_RE)]
    if only: files = [f for f in files if f.name in only]
    failed = []
    os.environ["IN_TEST"] = "1"  # nbdev sets this while processing: notebooks may skip demo-only work
    for src in sorted(files):
        dst = PROC / src.relative_to(nbs)
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime: continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        try: exec_nb(src, dst, FilterDefaults)
        except Exception as e:  # noqa: BLE001 - any error in the notebook's own cells
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            failed.append(f"{src.name}: {msg}")
            if strict: continue
            exec_nb(src, dst, _NoExec)
        print(f"  processed {src.name} in {time.time() - t0:.1f}s", flush=True)
    for f in nbs.rglob("*"):  # images and data files the notebooks show
        if f.is_file() and f.suffix.lower() in {".png", ".jpg", ".jpeg", ".svg", ".gif"} and not any(
                x.startswith((".", "_")) or x == "paper" for x in f.relative_to(nbs).parts[:-1]):
            d = PROC / f.relative_to(nbs); d.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, d)
    if failed:
        print("WARNING: docs cells failed (page rendered without API signatures; mark such cells `#| eval: false` or make "
              "them self-contained):\n  " + "\n  ".join(failed), file=sys.stderr)
        if strict: raise SystemExit(1)
    return PROC


def _frontmatter(src: str) -> dict:
    "Parse the YAML frontmatter nbdev writes into the first raw cell."
    import yaml

    body = src.strip()
    if not body.startswith("---"): return {}
    body = body.strip("-\n ")
    return yaml.safe_load(body) or {}


def page_for(nb_path: Path) -> tuple[str, str, dict]:
    "Convert one processed notebook for mkdocs-jupyter; returns (file name, title, notebook)."
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    cells, fm = [], {}
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "raw" and src.strip().startswith("---") and not fm:
            fm = _frontmatter(src)
            continue
        if c["cell_type"] == "markdown" and "AUTOGENERATED! DO NOT EDIT" in src: continue
        if c["cell_type"] == "code":
            tags = set(c.get("metadata", {}).get("tags", []))
            if re.search(r"^\s*#\|\s*echo:\s*false", src, re.MULTILINE): tags.add("hide_input")
            if re.search(r"^\s*#\|\s*output:\s*false", src, re.MULTILINE): tags.add("hide_output")
            src = _DIRECTIVE.sub("", src)
            c["metadata"] = {"tags": sorted(tags)} if tags else {}
            if not src.strip() and not c.get("outputs"): continue
        if c["cell_type"] == "markdown": src = _md(src)
        for o in c.get("outputs", []):
            md = o.get("data", {}).get("text/markdown")
            if md is not None: o["data"]["text/markdown"] = _md("".join(md) if isinstance(md, list) else md)
        c["source"] = src
        cells.append(c)
    title = fm.get("title") or nb_path.stem
    head = f"# {title}\n"
    if fm.get("description"): head += f"\n> {fm['description']}\n"
    cells.insert(0, {"cell_type": "markdown", "metadata": {}, "source": head})
    nb["cells"] = cells
    out = fm.get("output-file", nb_path.stem + ".html")
    name = "index.ipynb" if nb_path.stem == "index" else Path(out).with_suffix(".ipynb").name
    return name, title, nb


def results_page() -> str | None:
    "A Markdown page with the committed tables and figures of `outputs/` (what `dvc repro` made)."
    out = ROOT / "outputs"
    tables = sorted(out.glob("tables/*.md"))
    figs = sorted(out.glob("figures/*.png"))
    if not tables and not figs: return None
    SRC.joinpath("results").mkdir(parents=True, exist_ok=True)
    lines = ["# Results of the demo pipeline", "",
             "Tables and figures written by `dvc repro` (the demo profile in `params.yaml`). "
             "They are regenerated by the papermill notebooks in `nbs/paper/`.", ""]
    for t in tables:
        lines += [f"## {t.stem}", "", t.read_text(encoding="utf-8"), ""]
    for f in figs:
        shutil.copy2(f, SRC / "results" / f.name)
        lines += [f"## {f.stem}", "", f"![{f.stem}](results/{f.name})", ""]
    return "\n".join(lines)


def write_site_source(proc: Path, with_results: bool = True, only: list[str] | None = None) -> list:
    "Fill `_proc/_mkdocs/docs` from the processed notebooks; return the mkdocs nav."
    if SRC.exists(): shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    nav = []
    for p in sorted(proc.glob("*.ipynb")):
        if only and p.name not in only: continue
        name, title, nb = page_for(p)
        (SRC / name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
        entry = {("Home" if name == "index.ipynb" else title): name}
        nav.insert(0, entry) if name == "index.ipynb" else nav.append(entry)
    for f in proc.rglob("*"):  # images and other files the notebooks refer to
        if f.is_file() and f.suffix.lower() in {".png", ".jpg", ".jpeg", ".svg", ".gif"} and "_mkdocs" not in f.parts:
            dst = SRC / f.relative_to(proc)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst)
    if with_results and (md := results_page()):
        (SRC / "results.md").write_text(md, encoding="utf-8")
        nav.append({"Results": "results.md"})
    return nav


def write_config(nav: list) -> Path:
    "Write the generated mkdocs config (inherits the committed `mkdocs.yml`, adds nav and paths)."
    import yaml

    s = settings()
    cfg = {"INHERIT": os.path.relpath(ROOT / "mkdocs.yml", GEN_CFG.parent), "docs_dir": "docs",
           "site_dir": os.path.relpath(SITE, GEN_CFG.parent), "nav": nav,
           "site_description": s.get("description", "")}
    GEN_CFG.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return GEN_CFG


def run_mkdocs(cfg: Path) -> int:
    "Render the site with mkdocs (mkdocs-material + mkdocs-jupyter)."
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.call([sys.executable, "-m", "mkdocs", "build", "--clean", "-q", "-f", str(cfg)], cwd=ROOT, env=env)


def main(argv=None) -> int:
    "Build the site; returns a process exit code."
    global PROC, SRC, GEN_CFG, SITE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="notebook file names (regex-escaped) to include, e.g. index.ipynb 00_core.ipynb")
    ap.add_argument("--no-results", action="store_true", help="leave out the page with the tables and figures of outputs/")
    ap.add_argument("--quarto", choices=["auto", "never", "always"], default="auto",
                    help="use nbdev_docs when quarto is on PATH (auto), never, or require it")
    ap.add_argument("--proc", default=str(PROC), help="folder of the processed notebooks (default: _proc)")
    ap.add_argument("--site", default=str(SITE), help="folder of the built site (default: _docs)")
    ap.add_argument("--clean", action="store_true", help="reprocess every notebook (default: only those changed since _proc/)")
    ap.add_argument("--strict", action="store_true", help="fail when a notebook's docs cells fail (default: warn, render without them)")
    a = ap.parse_args(argv)
    PROC, SITE = Path(a.proc).resolve(), Path(a.site).resolve()
    SRC, GEN_CFG = PROC / "_mkdocs" / "docs", PROC / "_mkdocs" / "mkdocs.yml"
    t0 = time.time()
    has_quarto = shutil.which("quarto") is not None
    if a.quarto == "always" and not has_quarto:
        print("quarto is not on PATH: install it (https://quarto.org) or use --quarto never", file=sys.stderr)
        return 2
    if has_quarto and a.quarto != "never":
        rc = run_quarto()
    else:
        if a.clean and PROC.exists(): shutil.rmtree(PROC)
        proc = process_notebooks(a.only, strict=a.strict)
        nav = write_site_source(proc, with_results=not a.no_results, only=a.only)
        if not nav:
            print(f"no notebooks found under {ROOT/'nbs'}", file=sys.stderr)
            return 1
        rc = run_mkdocs(write_config(nav))
    if rc == 0: print(f"site written to {SITE} in {time.time()-t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
