"""The documentation site: built without Quarto from nbdev's processed notebooks, checked in headless Chromium."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BUILD = ROOT / "tools" / "build_docs.py"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--hide-scrollbars", "--window-size=1280,900"]


def chromium() -> str:
    "Path of a Chromium binary, or skip with the reason and the install command."
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if p := shutil.which(name): return p
    pytest.skip("chromium is not installed (apt-get install -y chromium): screenshot check skipped")


def screenshot(html: Path, png: Path) -> np.ndarray:
    "Render `html` headless to `png`; return the pixels."
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists(): png.unlink()
    r = subprocess.run([chromium(), *CHROME_FLAGS, f"--screenshot={png}", html.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot of {html}: {r.stderr[-2000:]}"
    return np.asarray(Image.open(png).convert("RGB"))


def _nb(cells):
    "A minimal nbformat-4 notebook from (cell_type, source) pairs."
    mk = lambda t, s: dict(cell_type=t, metadata={}, source=s, **({"outputs": [], "execution_count": None} if t == "code" else {}))
    return {"cells": [mk(t, s) for t, s in cells], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def load_build_docs():
    "tools/build_docs.py as a module."
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_docs", BUILD)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


TOY_PY = ("__all__ = ['TOY_LIMIT', 'add_numbers']\nTOY_LIMIT = 7  # the largest sum the toy adds\n"
          "def add_numbers(a:int, # first number\n                b:int=2, # second number\n"
          "               )->int:\n    \"Add two numbers, the docstring marker.\"\n    return a+b\n")
TOY_CELLS = [
    ("code", "#| default_exp toy"),
    ("markdown", "# Toy module\n> Adds numbers for the docs test."),
    ("code", "#| hide\nSECRET_SETUP = 'hidden-cell-marker'"),
    ("code", "#| export\nTOY_LIMIT = 7  # the largest sum the toy adds"),
    ("code", "#| export\ndef add_numbers(a:int, # first number\n                b:int=2, # second number\n               )->int:\n    \"Add two numbers, the docstring marker.\"\n    return a+b"),
    ("code", "_state = 40"),
    ("code", "import math; assert math.isqrt(_state + 9) == TOY_LIMIT"),  # needs state the docs build does not create
    ("code", "assert add_numbers(1) == 3")]


def make_project(d: Path, toy_cells: list, toy_py: str = TOY_PY) -> Path:
    "A two-notebook nbdev project (the repo's settings.ini and mkdocs.yml) in `d`."
    shutil.copy(ROOT / "settings.ini", d / "settings.ini")
    shutil.copy(ROOT / "mkdocs.yml", d / "mkdocs.yml")
    (d / "nbs").mkdir()
    (d / "qualiclip").mkdir()
    (d / "qualiclip" / "__init__.py").write_text("")
    (d / "nbs" / "index.ipynb").write_text(json.dumps(_nb([
        ("markdown", "# qualiclip\n> Landing page of the mini project."),
        ("markdown", "Welcome to the **zebra-landing** page.")])))
    (d / "nbs" / "01_toy.ipynb").write_text(json.dumps(_nb(toy_cells)))
    (d / "nbs" / "paper").mkdir()
    (d / "nbs" / "paper" / "T9_skip.ipynb").write_text(json.dumps(_nb([("markdown", "# Paper notebook, not a docs page")])))
    (d / "qualiclip" / "toy.py").write_text(toy_py)
    return d


def build(d: Path) -> subprocess.CompletedProcess:
    "Run the docs tool on project `d` (no Quarto, no results page)."
    env = dict(os.environ, QUALICLIP_ROOT=str(d), PYTHONPATH=str(d), HF_HUB_OFFLINE="1")
    return subprocess.run([PY, str(BUILD), "--quarto", "never", "--no-results"], cwd=d, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def mini_project(tmp_path_factory):
    "The mini project, built by the docs tool."
    d = make_project(tmp_path_factory.mktemp("docsproj"), TOY_CELLS)
    r = build(d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d


def test_mini_site_pages(mini_project):
    site = mini_project / "_docs"
    index, toy = (site / "index.html").read_text(), (site / "toy.html").read_text()
    assert "zebra-landing" in index
    assert "Toy module" in toy and "Add two numbers, the docstring marker." in toy  # show_doc of the exported function
    assert "first number" in toy                                                   # docments rendered
    assert "hidden-cell-marker" not in toy                                         # `#| hide` applied
    assert "#| export" not in toy and "default_exp" not in toy                     # directives removed
    assert not (site / "T9_skip.html").exists()                                    # paper notebooks are not pages
    assert ">TOY_LIMIT<" in toy and "the largest sum the toy adds" in toy          # the exported constant's entry


def test_mini_site_coverage(mini_project):
    "Both public names are documented: the function by nbdev's `show_doc`, the constant by `add_const_docs`."
    bd = load_build_docs()
    assert bd.coverage(mini_project / "_docs", mini_project / "qualiclip") == {"toy.html": (2, 2, [])}
    assert bd.documented_names((mini_project / "_docs" / "index.html").read_text()) == set()  # prose headings do not count


def test_mini_site_search_offline(mini_project):
    "Search works opened from disk: the inlined index and the local Worker shim answer a query in headless Chromium."
    site = mini_project / "_docs"
    index = (site / "search" / "search_index.js").read_text()
    assert index.startswith("var __index = ") and "add_numbers" in index
    html = (site / "toy.html").read_text()
    assert "iframe-worker-shim.js" in html and "unpkg.com/iframe-worker" not in html
    r = subprocess.run([chromium(), *CHROME_FLAGS, "--virtual-time-budget=10000", "--dump-dom",
                        (site / "index.html").as_uri() + "?q=add_numbers"], capture_output=True, text=True, timeout=120)
    assert 'class="md-search-result__link"' in r.stdout, r.stderr[-2000:]
    assert "toy.html#add_numbers" in r.stdout  # the show_doc entry is found


def test_failing_cell_fails_build(tmp_path):
    "An exported cell that raises fails the build (exit 1) with the notebook, cell and error named."
    cells = TOY_CELLS[:4] + [("code", "#| export\ndef broken(): pass\nraise RuntimeError('docs-build-marker')")]
    r = build(make_project(tmp_path, cells))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "01_toy.ipynb: cell 4 (RuntimeError: docs-build-marker)" in r.stderr, r.stderr  # 0-based, as saved
    assert not (tmp_path / "_docs" / "toy.html").exists()


def _cell(src):
    from execnb.nbio import mk_cell
    from nbdev.process import extract_directives
    c = mk_cell(src); c.directives_ = extract_directives(c)
    return c


def test_import_part():
    "Only a cell mixing imports with other code is cut down to its imports."
    ip = load_build_docs().import_part
    assert ip(_cell("import math, os; x = f(1)\nfrom pathlib import Path as P\nassert x")) == "import math, os\nfrom pathlib import Path as P"
    assert ip(_cell("import math\nfrom os import path")) is None           # pure imports: run whole, as nbdev does
    assert ip(_cell("x = 1")) is None                                      # no imports: not run
    assert ip(_cell("def f():\n    import os\n    return os.sep\nf()")) == ""  # nested imports only: nothing run
    assert ip(_cell("from math import pi\nshow_doc(pi)")) is None          # shows docs: run whole, as nbdev does
    assert ip(_cell("#| export\nimport math\nX = 1")) is None              # exported: run whole
    assert ip(_cell("#| eval: false\nimport math\nx = 1")) is None         # eval false: not run


def test_const_names():
    "Public top-level constants with their definition and comment (each name of a tuple assignment: nbdev exports them all); private names and functions left out."
    cn = load_build_docs().const_names
    src = "#| export\nA = 1  # one\n# two, said above\nB: int = 2\n_C = 3\nD, E = 4, 5\ndef f(): pass\nF = {\n  'a': 1,  # not this\n}"
    assert cn(src) == [("A", "A = 1", "one"), ("B", "B: int = 2", "two, said above"), ("D", "D, E = 4, 5", ""), ("E", "D, E = 4, 5", ""),
                       ("F", "F = {\n  'a': 1,  # not this\n}", "")]


def test_mini_site_screenshot(mini_project):
    px = screenshot(mini_project / "_docs" / "toy.html", mini_project / "toy.png")
    assert px.shape[:2] == (900, 1280)
    assert px.std() > 10, "the screenshot is blank"
    assert (px.reshape(-1, 3) != px[0, 0]).any(axis=1).mean() > 0.02  # text and header drawn, not one colour


MIN_COVERAGE = 0.9  # share of a module's `__all__` that its page must document


def test_repo_site(tmp_path):
    """Build the whole site (every notebook, into a scratch folder): every module page documents at least 90% of its
    `__all__`, the search index is inlined, the pages render."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    env.pop("QUALICLIP_ROOT", None)
    site = tmp_path / "site"
    r = subprocess.run([PY, str(BUILD), "--quarto", "never", "--proc", str(tmp_path / "proc"), "--site", str(site)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cov = load_build_docs().coverage(site)
    modules = {p.stem for p in (ROOT / "qualiclip").glob("*.py") if not p.stem.startswith("_")}
    assert {Path(p).stem for p in cov} == modules, sorted(cov)                # one page per module
    low = {p: f"{n}/{t}, missing {m}" for p, (n, t, m) in cov.items() if n < MIN_COVERAGE * t}
    assert not low, low
    for page, name in (("model.html", "QualiCLIP"), ("scoring.html", "get_scorer")):  # signatures rendered by show_doc
        assert f'<span class="nf">{name}</span>' in (site / page).read_text(), f"{page} shows no signature of {name}"
    assert "get_scorer" in (site / "search" / "search_index.js").read_text()
    index = (site / "index.html").read_text()
    assert "QualiCLIP" in index
    core = site / "core.html"
    core_html = core.read_text()
    assert "repo_root" in core_html and "load_image" in core_html
    assert "Run the gMAD competition between two models" in (site / "gmad.html").read_text()  # gmad_cmd's docstring
    shots = ROOT / "_proc" / "screenshots"  # kept for a look: _proc/ is git-ignored
    for page in (site / "index.html", core):
        px = screenshot(page, shots / f"{page.stem}.png")
        assert px.std() > 10, f"blank screenshot of {page}"
