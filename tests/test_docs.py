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


@pytest.fixture(scope="module")
def mini_project(tmp_path_factory):
    "A two-notebook nbdev project (the repo's settings.ini and mkdocs.yml) built by the docs tool."
    d = tmp_path_factory.mktemp("docsproj")
    shutil.copy(ROOT / "settings.ini", d / "settings.ini")
    shutil.copy(ROOT / "mkdocs.yml", d / "mkdocs.yml")
    (d / "nbs").mkdir()
    (d / "qualiclip").mkdir()
    (d / "qualiclip" / "__init__.py").write_text("")
    (d / "nbs" / "index.ipynb").write_text(json.dumps(_nb([
        ("markdown", "# qualiclip\n> Landing page of the mini project."),
        ("markdown", "Welcome to the **zebra-landing** page.")])))
    (d / "nbs" / "01_toy.ipynb").write_text(json.dumps(_nb([
        ("code", "#| default_exp toy"),
        ("markdown", "# Toy module\n> Adds numbers for the docs test."),
        ("code", "#| hide\nSECRET_SETUP = 'hidden-cell-marker'"),
        ("code", "#| export\ndef add_numbers(a:int, # first number\n                b:int=2, # second number\n               )->int:\n    \"Add two numbers, the docstring marker.\"\n    return a+b"),
        ("code", "assert add_numbers(1) == 3")])))
    (d / "nbs" / "paper").mkdir()
    (d / "nbs" / "paper" / "T9_skip.ipynb").write_text(json.dumps(_nb([("markdown", "# Paper notebook, not a docs page")])))
    (d / "qualiclip" / "toy.py").write_text(
        "__all__ = ['add_numbers']\ndef add_numbers(a:int, # first number\n                b:int=2, # second number\n"
        "               )->int:\n    \"Add two numbers, the docstring marker.\"\n    return a+b\n")
    env = dict(os.environ, QUALICLIP_ROOT=str(d), PYTHONPATH=str(d), HF_HUB_OFFLINE="1")
    r = subprocess.run([PY, str(BUILD), "--quarto", "never", "--no-results"], cwd=d, env=env, capture_output=True, text=True, timeout=600)
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


def test_mini_site_screenshot(mini_project):
    px = screenshot(mini_project / "_docs" / "toy.html", mini_project / "toy.png")
    assert px.shape[:2] == (900, 1280)
    assert px.std() > 10, "the screenshot is blank"
    assert (px.reshape(-1, 3) != px[0, 0]).any(axis=1).mean() > 0.02  # text and header drawn, not one colour


FAST_PAGES = ["index.ipynb", "00_core.ipynb", "10_gmad.ipynb"]  # the full site takes minutes (see tools/build_docs.py)


def test_repo_site(tmp_path):
    "Build the project's landing page and two API pages (into a scratch folder), check them, screenshot them."
    missing = [n for n in FAST_PAGES if not (ROOT / "nbs" / n).exists()]
    if missing: pytest.skip(f"{missing} not written yet")
    env = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    env.pop("QUALICLIP_ROOT", None)
    site = tmp_path / "site"
    r = subprocess.run([PY, str(BUILD), "--quarto", "never", "--strict", "--proc", str(tmp_path / "proc"), "--site", str(site),
                        "--only", *FAST_PAGES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    index = (site / "index.html").read_text()
    assert "QualiCLIP" in index
    core, gmad = site / "core.html", site / "gmad.html"
    assert core.exists() and gmad.exists(), sorted(p.name for p in site.glob("*.html"))
    core_html = core.read_text()
    assert "repo_root" in core_html and "load_image" in core_html
    assert "Run the gMAD competition between two models" in gmad.read_text()  # gmad_cmd's docstring via show_doc
    shots = ROOT / "_proc" / "screenshots"  # kept for a look: _proc/ is git-ignored
    for page in (site / "index.html", core):
        px = screenshot(page, shots / f"{page.stem}.png")
        assert px.std() > 10, f"blank screenshot of {page}"
