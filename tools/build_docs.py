"""Build the documentation site from the notebooks into `_docs/`.

With Quarto on PATH this is plain `nbdev_docs`. Without it (the usual case on build machines), nbdev's own
notebook processing (what `nbdev_docs` runs before Quarto: `#| hide`, `#| export` -> `show_doc`, frontmatter, ...)
writes processed notebooks to `_proc/`, which are then turned into a mkdocs-material site by mkdocs-jupyter.
Two processors differ from nbdev's (`_docs_procs`): `exec_docs` runs only the import statements of a cell that mixes
imports with other code (nbdev runs such a cell whole, without the state earlier cells build, and it fails), and
`add_const_docs` documents the public constants that nbdev's `add_show_docs` leaves out. Any failing cell fails the
build. `coverage` counts the public names (`__all__`) each module page documents. The site works offline: no web
fonts, no CDN scripts; Material's `offline` plugin inlines the search index so that search works opened from disk.

Usage: python tools/build_docs.py [--only NAME ...] [--no-results] [--clean] [--quarto auto|never|always]
       python tools/build_docs.py --coverage [SITE]   # per module page: public names documented / in `__all__`
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tokenize
from configparser import ConfigParser
from html.parser import HTMLParser
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


def _parsed(cell) -> list:
    "Top-level statements of a code cell (nbdev's parse: magics and directives removed); [] when it does not parse."
    return (cell.parsed_() or []) if cell.cell_type == "code" and cell.source else []


def _is_import(n) -> bool: return isinstance(n, (ast.Import, ast.ImportFrom))


def import_part(cell) -> str | None:
    """The top-level import statements ("" when none) of a cell that mixes imports, at any depth, with other code: nbdev
    would run it whole, out of order, without the state the rest of the notebook builds. None for every other cell
    (pure imports, exported or `show_doc` cells, cells without imports), which run as nbdev runs them."""
    from nbdev.processors import _show_docs, cell_lang
    if cell.cell_type != "code" or cell_lang(cell) != "python": return None
    d = cell.directives_
    if d.get("eval:", [""])[0].lower() == "false" or d.keys() & {"export", "exports", "exporti", "exec_doc"}: return None
    body = _parsed(cell)
    if _show_docs(body) or all(_is_import(n) for n in body): return None
    if not any(_is_import(x) for n in body for x in ast.walk(n)): return None
    return "\n".join(ast.unparse(n) for n in body if _is_import(n))


def _docs_procs():
    "nbdev's docs processors, with `exec_show_docs` replaced by `exec_docs` and `add_const_docs` after `add_show_docs`."
    from nbdev.processors import FilterDefaults, add_show_docs, exec_show_docs

    class exec_docs(exec_show_docs):
        """`exec_show_docs` (run exported, import and `show_doc` cells) that runs only the import statements of a cell
        mixing imports with other code, and raises on any error with the notebook, cell and exception."""
        def __call__(self, cell):
            if not self.nb.has_docs_ or not hasattr(self, "k"): return
            if str(getattr(self.nb, "frontmatter_", {}).get("skip_showdoc", False)).lower() in ("true", "1", "yes"): return
            imports = import_part(cell)
            if imports is not None:  # the cell's saved outputs are kept
                if imports: self.k.run(imports)
            else:
                from nbdev.processors import _do_eval
                if _do_eval(cell): self.k.cell(cell)
            if self.k.exc:
                e = self.k.exc
                n = cell.get("src_idx_", cell.idx_)  # the cell's place in the notebook as saved (0-based)
                raise DocsCellError(f"cell {n} ({type(e).__name__}: {e}) in:\n{cell.source}") from e

    procs = []
    for p in FilterDefaults().procs():
        procs.append(exec_docs if p is exec_show_docs else p)
        if p is add_show_docs: procs.append(_add_const_docs())
    return procs


def _process(nb):
    "Process one notebook with `_docs_procs`, first noting each cell's place (`src_idx_`, not written out)."
    from nbdev.process import NBProcessor
    for i, c in enumerate(nb.cells): c.src_idx_ = i
    return NBProcessor(nb=nb, procs=_docs_procs()).process()


class DocsCellError(Exception):
    "A notebook cell that failed while the docs were built."


def _comment(lines: list[str], n) -> str:
    "The `# comment` on the first line of statement `n`, else the comment lines right above it."
    first = lines[n.lineno - 1]
    if "#" in first:
        try: toks = list(tokenize.generate_tokens(io.StringIO(first).readline))
        except (tokenize.TokenError, SyntaxError): toks = []
        if c := [t.string for t in toks if t.type == tokenize.COMMENT]: return c[0].lstrip("#").strip()
    above, i = [], n.lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#") and not lines[i].lstrip().startswith("#|"):
        above.insert(0, lines[i].strip().lstrip("#").strip()); i -= 1
    return " ".join(above)


def const_names(src: str) -> list[tuple[str, str, str]]:
    "(name, source, comment) of the public top-level constants that a cell assigns, as nbdev puts them into `__all__`."
    src = _DIRECTIVE.sub("", src)
    try: tree = ast.parse(src)
    except SyntaxError: return []
    lines, out = src.splitlines(), []
    for n in tree.body:
        tgts = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) and n.value else []
        for t in [e for t in tgts for e in (t.elts if isinstance(t, ast.Tuple) else [t])]:   # `A, B = ...` names both
            if isinstance(t, ast.Name) and not t.id.startswith("_"):
                code = ast.get_source_segment(src, n) or ast.unparse(n)
                code_lines = code.splitlines()
                if len(code_lines) > 8: code = "\n".join(code_lines[:8] + ["    ..."])
                out.append((t.id, code, _comment(lines, n)))
    return out


def const_doc(name: str, code: str, comment: str) -> str:
    "The `show_doc`-style Markdown entry of a module constant: heading, its definition, its comment."
    doc = f"---\n\n### {name}\n\n```python\n{code}\n```\n"
    return doc + (f"\n*{comment}*\n" if comment else "")


def _add_const_docs():
    "The `add_const_docs` processor class (nbdev is imported only when the docs are built)."
    from nbdev.process import Processor
    from nbdev.processors import _get_nm, _show_docs, _want_doc
    from execnb.nbio import NbCell, mk_cell

    class add_const_docs(Processor):
        """Add a `show_doc`-style entry after each exported cell for the public constants it assigns (nbdev's
        `add_show_docs` documents only functions and classes), unless the notebook shows that name itself."""
        def begin(self):
            nb = self.nb
            shown = {_get_nm(t) for t in _show_docs([t for c in nb.cells for t in (NbCell.parsed_(c) or [])])}
            for cell in reversed([c for c in nb.cells if _want_doc(c)]):
                for name, code, comment in reversed([c for c in const_names(cell.source) if c[0] not in shown]):
                    new = mk_cell(f"#| echo: false\n#| output: asis\n# {name}")
                    new.outputs = [dict(output_type="execute_result", execution_count=None, metadata={},
                                        data={"text/markdown": const_doc(name, code, comment), "text/plain": name})]
                    nb.cells.insert(cell.idx_ + 1, new)
                    shown.add(name)
    return add_const_docs


def process_notebooks(only: list[str] | None = None) -> Path:
    """Run nbdev's docs processors (`_docs_procs`: those of `nbdev_docs`, see `exec_docs` and `add_const_docs`) over
    `nbs/` into `_proc/`, one notebook at a time, skipping notebooks unchanged since their last processing (and since
    this file last changed). Any failing cell fails the build (`SystemExit(1)`) after every notebook was tried."""
    os.chdir(ROOT)
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    from nbdev.serve_drv import exec_nb

    nbs = Path(get_config().nbs_path)
    files = [Path(f) for f in nbglob(nbs, skip_folder_re=SKIP_FOLDER_RE)]
    if only: files = [f for f in files if f.name in only]
    failed, tool_mtime = [], Path(__file__).stat().st_mtime
    os.environ["IN_TEST"] = "1"  # nbdev sets this while processing: notebooks may skip demo-only work
    for src in sorted(files):
        dst = PROC / src.relative_to(nbs)
        if dst.exists() and dst.stat().st_mtime >= max(src.stat().st_mtime, tool_mtime): continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        try: exec_nb(src, dst, lambda: _process)
        except Exception as e:  # noqa: BLE001 - any error in the notebook's own cells
            failed.append(f"{src.name}: {e}")
            if dst.exists(): dst.unlink()
            continue
        print(f"  processed {src.name} in {time.time() - t0:.1f}s", flush=True)
    for f in nbs.rglob("*"):  # images and data files the notebooks show
        if f.is_file() and f.suffix.lower() in {".png", ".jpg", ".jpeg", ".svg", ".gif"} and not any(
                x.startswith((".", "_")) or x == "paper" for x in f.relative_to(nbs).parts[:-1]):
            d = PROC / f.relative_to(nbs); d.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, d)
    if failed:
        print("ERROR: docs cells failed; make the cell self-contained, or mark it `#| eval: false` when the docs need "
              "not run it:\n" + "\n".join(failed), file=sys.stderr)
        raise SystemExit(1)
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


# Material's offline plugin adds an `iframe-worker` shim from unpkg.com unless `extra.polyfills` already names one:
# `mkdocs.yml` names this file, so that search also works opened from disk with no network.
SHIM = "assets/javascripts/iframe-worker-shim.js"
SHIM_JS = """/* Worker for pages opened from the file system (file://), where browsers refuse `new Worker(url)`: the worker
   script runs in a hidden iframe of the same origin. Served pages keep the browser's Worker. */
(function () {
  if (location.protocol !== "file:") return;
  function IFrameWorker(url) {
    var that = this, frame = document.createElement("iframe"), queue = [], loaded = false, on = {};
    function emit(type, ev) {
      if (typeof that["on" + type] === "function") that["on" + type](ev);
      (on[type] || []).forEach(function (f) { f(ev); });
    }
    this.addEventListener = function (t, f) { (on[t] = on[t] || []).push(f); };
    this.removeEventListener = function (t, f) { on[t] = (on[t] || []).filter(function (g) { return g !== f; }); };
    frame.style.display = "none";
    frame.setAttribute("aria-hidden", "true");
    (document.body || document.documentElement).appendChild(frame);
    var w = frame.contentWindow, d = w.document;
    function deliver(data) { w.dispatchEvent(new w.MessageEvent("message", {data: data})); }
    w.postMessage = function (data) { setTimeout(function () { emit("message", {data: data}); }, 0); };
    var s = d.createElement("script");
    s.src = new URL(url, location.href).href;
    s.onload = function () { loaded = true; queue.splice(0).forEach(deliver); };
    s.onerror = function (e) { emit("error", e); };
    (d.head || d.documentElement).appendChild(s);
    this.postMessage = function (data) { if (loaded) deliver(data); else queue.push(data); };
    this.terminate = function () { frame.remove(); };
  }
  window.IFrameWorker = IFrameWorker;
  window.Worker = IFrameWorker;
})();
"""


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
    (SRC / SHIM).parent.mkdir(parents=True, exist_ok=True)
    (SRC / SHIM).write_text(SHIM_JS, encoding="utf-8")
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


class _DocHeads(HTMLParser):
    "Collect the headings inside rendered Markdown outputs (where `show_doc` entries land) of a page."
    def __init__(self):
        super().__init__()
        self.depth, self.heading, self.names = [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            out = "jp-OutputArea-output" in (a.get("class") or "") and a.get("data-mime-type") == "text/markdown"
            self.depth.append(out)
        elif tag in ("h2", "h3", "h4") and any(self.depth): self.heading = ""

    def handle_endtag(self, tag):
        if tag == "div" and self.depth: self.depth.pop()
        elif tag in ("h2", "h3", "h4") and self.heading is not None:
            self.names.append(self.heading.replace("\u00b6", "").strip()); self.heading = None

    def handle_data(self, data):
        if self.heading is not None: self.heading += data


def documented_names(html: str) -> set[str]:
    "Names that a built page documents with a `show_doc` entry (a heading in a rendered Markdown output)."
    p = _DocHeads(); p.feed(html)
    return set(p.names)


def public_names(module_py: Path) -> list[str]:
    "The module's `__all__`, read from its source without importing it."
    for n in ast.parse(module_py.read_text(encoding="utf-8")).body:
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets):
            return list(ast.literal_eval(n.value))
    return []


def coverage(site_dir: str | Path, lib_dir: str | Path | None = None) -> dict[str, tuple[int, int, list[str]]]:
    "Per module page of a built site: (public names documented, names in the module's `__all__`, names missing)."
    lib = Path(lib_dir) if lib_dir else ROOT / settings().get("lib_path", "qualiclip")
    out = {}
    for page in sorted(Path(site_dir).glob("*.html")):
        mod = lib / f"{page.stem}.py"
        if not mod.exists() or not (names := public_names(mod)): continue
        shown = documented_names(page.read_text(encoding="utf-8"))
        missing = [n for n in names if n not in shown]
        out[page.name] = (len(names) - len(missing), len(names), missing)
    return out


def print_coverage(site_dir: str | Path) -> int:
    "Print the coverage table of a built site; returns 0, or 1 when no module page was found."
    cov = coverage(site_dir)
    for page, (n, total, missing) in cov.items():
        print(f"{page:18s} {n:3d}/{total:<3d} {100 * n / total:5.1f}%" + (f"  missing: {', '.join(missing)}" if missing else ""))
    if not cov: print(f"no module pages under {site_dir}", file=sys.stderr)
    return 0 if cov else 1


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
    ap.add_argument("--strict", action="store_true", help="accepted for compatibility: a failing cell always fails the build")
    ap.add_argument("--coverage", nargs="?", const=str(SITE), metavar="SITE",
                    help="only print, per module page of a built site, the public names it documents")
    a = ap.parse_args(argv)
    if a.coverage: return print_coverage(a.coverage)
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
        proc = process_notebooks(a.only)
        nav = write_site_source(proc, with_results=not a.no_results, only=a.only)
        if not nav:
            print(f"no notebooks found under {ROOT/'nbs'}", file=sys.stderr)
            return 1
        rc = run_mkdocs(write_config(nav))
    if rc == 0: print(f"site written to {SITE} in {time.time()-t0:.1f}s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
