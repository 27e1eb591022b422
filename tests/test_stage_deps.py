"""Each stage of dvc.yaml lists the library modules its command runs (the whole pipeline is checked by `make paper-smoke`,
which traces its `dvc repro`); here one real stage command is traced, and the check fails when a module leaves its list."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from qualiclip.pipeline import missing_stage_deps, traced_modules

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_a_traced_stage_declares_what_it_runs_and_a_removed_module_is_named(tmp_path):
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pristine"]
    cmd = stage["cmd"].replace("${pristine.demo_dir}", str(tmp_path / "photos"))
    env = dict(os.environ, QUALICLIP_TRACE=str(tmp_path / "trace"), HF_HUB_OFFLINE="1")
    env.pop("QUALICLIP_TRACE_CMD", None)
    r = subprocess.run([str(BIN / "qualiclip"), *shlex.split(cmd)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    traced = traced_modules(tmp_path / "trace")
    ran = traced[tuple(shlex.split(cmd))]
    assert {"core.py", "pipeline.py"} <= ran and "train.py" not in ran and "losses.py" not in ran, ran   # imports alone do not count
    lock = {"stages": {"pristine": {"cmd": cmd, "deps": [{"path": d} for d in stage["deps"]]}}}
    assert missing_stage_deps(lock, traced) == ({}, [])
    lock["stages"]["pristine"]["deps"] = [{"path": d} for d in stage["deps"] if d != "qualiclip/core.py"]
    assert missing_stage_deps(lock, traced)[0] == {"pristine": ["core.py"]}
