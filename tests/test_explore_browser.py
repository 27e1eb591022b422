"""The quality explorer in a real browser: JupyterLab runs nbs/16_explore.ipynb, headless Chromium moves the level slider,
and the score the widget shows must change and equal `qualiclip score` on the saved picture with the same checkpoint."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NOTEBOOK = ROOT / "nbs" / "16_explore.ipynb"
SHOT = ROOT / "_proc" / "screenshots" / "explore_lab.png"  # git-ignored, like the docs screenshots (see the report in the notebook)


def chromium() -> str:
    "Path of a Chromium binary, or skip with the reason and the install command."
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if p := shutil.which(name): return p
    pytest.skip("chromium is not installed (apt-get install -y chromium, or `make sysdeps`): browser check skipped")


def sync_playwright():
    "Playwright's sync API, or skip with the install command."
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it drives the system Chromium, no browser download)")
    return sp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    "Stop a process started in its own session, and its group (kernels included): TERM, then KILL."
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try: os.killpg(proc.pid, sig)
        except ProcessLookupError: return
        try: proc.wait(wait); return
        except subprocess.TimeoutExpired: continue


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab on a free local port with a temporary token and root folder holding a copy of the notebook."
    exe, browser = BIN / "jupyter-lab", chromium()
    if not exe.exists(): pytest.skip(f"{exe} is missing: install the dev requirements (make install)")
    sync_playwright()
    d = tmp_path_factory.mktemp("lab")
    root, cfg = d / "root", d / "jupyter"
    root.mkdir(); cfg.mkdir()
    nb = json.loads(NOTEBOOK.read_text())
    nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}  # no kernel dialog
    (root / "explore.ipynb").write_text(json.dumps(nb))
    tracker = cfg / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))  # every cell rendered, also those out of view
    news = cfg / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # offline: no news toast over the widget
    token, port = os.urandom(16).hex(), free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", JUPYTER_CONFIG_DIR=str(cfg / "config"),
               JUPYTER_RUNTIME_DIR=str(cfg / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(cfg / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(cfg / "workspaces"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(d / "lab.log", "w")
    proc = subprocess.Popen([str(exe), "--no-browser", "--allow-root", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
                             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            if proc.poll() is not None: break
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read(); break
            except OSError: time.sleep(0.5)
        else: pytest.fail("JupyterLab did not answer within 60 s:\n" + (d / "lab.log").read_text()[-3000:])
        if proc.poll() is not None: pytest.fail("JupyterLab exited:\n" + (d / "lab.log").read_text()[-3000:])
        yield {"url": url, "token": token, "root": root, "browser": browser, "log": d / "lab.log", "tmp": d}
    finally:
        stop(proc); log.close()


def test_explorer_in_jupyterlab(lab):
    sp = sync_playwright()
    with sp() as p:
        b = p.chromium.launch(executable_path=lab["browser"], args=["--no-sandbox", "--disable-gpu"])
        try:
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab['url']}/lab/tree/explore.ipynb?token={lab['token']}")
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-NotebookPanel')", timeout=90_000)
            page.wait_for_function("""() => { const w = window.jupyterapp.shell.currentWidget;
                return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel &&
                       w.sessionContext.session.kernel.status === 'idle'; }""", timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            score = page.locator(".qc-score-0").last
            score.wait_for(timeout=240_000)
            assert page.locator(".qc-what").last.text_content().strip() == "pristine"
            score.scroll_into_view_if_needed()
            s0 = float(score.text_content())
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            failed = [t for t in errors.all_text_contents() if "Traceback" in t or "Error" in t]  # stderr also holds progress bars
            assert not failed, "\n".join(failed)[-3000:]

            explorer = page.locator(".widget-vbox", has=page.locator(".qc-score-0")).last
            explorer.scroll_into_view_if_needed()
            handle = explorer.locator(".widget-hslider .noUi-handle").first
            handle.focus()
            for _ in range(4): handle.press("ArrowRight")
            page.wait_for_function("""() => { const e = [...document.querySelectorAll('.qc-what')].pop();
                return e && e.textContent.trim() === 'gaublur level 4'; }""", timeout=120_000)  # scores and level: one HTML value
            assert explorer.locator(".widget-hslider .widget-readout").first.text_content().strip() == "4"
            s4 = float(score.text_content())
            assert s4 != s0, (s0, s4)

            explorer.locator("button", has_text="save picture").click()
            saved = explorer.locator(".qc-saved")
            saved.wait_for(timeout=60_000)
            png = Path(saved.text_content().strip())
            ckpt = explorer.locator("input[list]").first.input_value()  # the first checkpoint selector (a combobox)
            assert png.name == "astronaut_gaublur_4.png" and png.exists(), png
            SHOT.parent.mkdir(parents=True, exist_ok=True)
            explorer.screenshot(path=str(SHOT))

            out = lab["tmp"] / "scores.csv"
            r = subprocess.run([str(BIN / "qualiclip"), "score", str(png), "--weights", ckpt, "--out", str(out), "--device", "cpu"],
                               capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            assert r.returncode == 0, r.stdout + r.stderr
            cli = float(next(csv.DictReader(out.open()))["score"])
            assert abs(cli - s4) <= 1e-4, (cli, s4)  # the widget shows 4 decimals
        finally:
            b.close()
    assert SHOT.exists() and SHOT.stat().st_size > 10_000
