"""The paper profile's contract with its user: inputs are never touched, code edits re-run what they affect,
changed settings never break `dvc repro`, command-line options win, and `qualiclip check` says what is missing."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc") if (BIN / "dvc").exists() else "dvc"
Q = str(BIN / "qualiclip") if (BIN / "qualiclip").exists() else "qualiclip"
GIT_ID = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


def env_for(repo: Path) -> dict:
    return dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", QUALICLIP_ROOT=str(repo),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **GIT_ID)


def scratch_repo(d: Path, params: str = "params.yaml", lock: bool = False) -> Path:
    "A git+DVC repository with the project's pipeline, library and notebooks (no data, no runs)."
    for f in ("dvc.yaml", "settings.ini", "data.dvc") + (("dvc.lock",) if lock else ()):
        shutil.copy(ROOT / f, d / f)
    if params == "params.yaml": shutil.copy(ROOT / params, d / "params.yaml")
    else:   # an overlay: resolved as `qualiclip profile NAME` does
        from qualiclip.config import profile_cmd
        assert profile_cmd(str(ROOT / params), out=str(d / "params.yaml")) == 0
    shutil.copytree(ROOT / "qualiclip", d / "qualiclip", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "nbs" / "paper", d / "nbs" / "paper")
    env = env_for(d)
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=d, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=d, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "scratch"], cwd=d, check=True, env=env)
    return d


def run(cmd, repo, timeout=600):
    r = subprocess.run(cmd, cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def tree_hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_hand_placed_dataset_survives_repro_and_its_index_follows_it(tmp_path):
    "A dataset folder unpacked by hand is an input: `dvc repro` never touches it, and re-indexes it when a file changes."
    from qualiclip.datasets import miniature
    repo = scratch_repo(tmp_path, "params/paper-smoke.yaml")
    ds = repo / "data" / "datasets" / "kadid10k"
    miniature("kadid10k", ds, n=2)
    (ds / "my_notes.txt").write_text("the user's own file\n")
    before = tree_hashes(ds)
    rc, out = run([DVC, "repro", "index@kadid10k"], repo)
    assert rc == 0, out[-3000:]
    assert tree_hashes(ds) == before                       # byte for byte, nothing added or removed
    index = repo / "data" / "index" / "kadid10k.csv"
    first = index.read_text()
    assert first.count("\n") == 1 + 4                      # header + 2 references x 2 distorted images
    rc, out = run([DVC, "repro", "index@kadid10k"], repo)
    assert rc == 0 and "didn't change, skipping" in out, out[-2000:]
    img = next((ds / "kadid10k" / "images").glob("I01_*.png"))
    from PIL import Image
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)    # the user replaces one image
    rc, out = run([DVC, "status", "index@kadid10k"], repo)
    assert "modified:" in out and "data/datasets/kadid10k" in out, out
    rc, out = run([DVC, "repro", "index@kadid10k"], repo)
    assert rc == 0 and "Running stage 'index@kadid10k'" in out, out[-2000:]
    assert index.read_text() != first                      # the index records the new file (size, time)
    assert (ds / "my_notes.txt").read_text() == "the user's own file\n"


def _changed_by(repo: Path, module: str) -> set:
    "Stages whose recorded dependency `qualiclip/<module>` differs from the working tree (`dvc status --json`)."
    r = subprocess.run([DVC, "status", "--json"], cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    return {s for s, changes in st.items() for c in changes if isinstance(c, dict)
            and f"qualiclip/{module}" in (c.get("changed deps") or {})}


def test_code_edits_rerun_what_they_affect(tmp_path):
    "dvc.lock records the library modules each stage runs: an edit marks exactly the stages that run that module."
    repo = scratch_repo(tmp_path, lock=True)
    assert _changed_by(repo, "losses.py") == set(), "dvc.lock does not match qualiclip/losses.py: run `make repro` and commit"
    with open(repo / "qualiclip" / "losses.py", "a") as f: f.write("\n# an edit\n")
    ablations = {f"ablate@{k}" for k in yaml.safe_load((ROOT / "params.yaml").read_text())["ablations"]}
    assert _changed_by(repo, "losses.py") == {"train"} | ablations
    with open(repo / "qualiclip" / "gmad.py", "a") as f: f.write("\n# an edit\n")
    assert _changed_by(repo, "gmad.py") == {"gmad"}
    rc, out = run([DVC, "dag", "--dot", "table_ablations"], repo)
    assert '"ablate@full" -> "table_ablations"' in out
    rc, out = run([DVC, "dag", "--dot", "table_opinion_unaware"], repo)
    assert '"train" -> "evaluate@ours"' in out and '"evaluate@ours" -> "table_opinion_unaware"' in out, out


def test_changed_training_setting_starts_a_new_run(tmp_path):
    "After a change to train.lr, `dvc repro` moves the old run aside and trains anew, without an error."
    repo = scratch_repo(tmp_path)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"].update(steps=2, crop=64, levels=2, batch_size=2, val_every=2, val_repeats=1, ckpt_every=1, log_every=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    rc, out = run([DVC, "repro", "train"], repo)
    assert rc == 0, out[-3000:]
    run_dir = repo / p["train"]["out"]
    import torch
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["config"]["lr"] == p["train"]["lr"]
    p["train"]["lr"] = 0.0005
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    rc, out = run([DVC, "repro", "train"], repo)
    assert rc == 0, out[-3000:]
    assert "moved aside" in out and "settings differ" in out, out[-3000:]
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ck["config"]["lr"] == 0.0005 and ck["step"] == 2
    aside = sorted(run_dir.parent.glob(run_dir.name + ".prev-*"))
    assert len(aside) == 1 and torch.load(aside[0] / "checkpoint.pt", weights_only=True)["config"]["lr"] == 0.001


def test_command_line_option_wins_over_the_profile(tmp_path):
    "`qualiclip train --params params.yaml --crop 224` trains at 224 (224 is also TrainConfig's default)."
    from qualiclip.core import write_demo_photos
    for s in ("train", "val"): write_demo_photos(tmp_path / "pristine" / s, s)
    train = dict(pristine=str(tmp_path / "pristine/train"), val_pristine=str(tmp_path / "pristine/val"), crop=96,
                 levels=2, batch_size=2, workers=0, steps=1, warmup_steps=0, val_every=1, val_repeats=1, ckpt_every=1,
                 out=str(tmp_path / "run"), progress=False, compile=True, pretrained=None, precision="fp32")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "model": {"backbone": "qualiclip-tiny"},
                                                      "train": train}))
    r = subprocess.run([Q, "train", "--params", str(tmp_path / "p.yaml"), "--crop", "224", "--no-compile"], cwd=tmp_path,
                       env=env_for(ROOT), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    import torch
    cfg = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["config"]
    assert (cfg["crop"], cfg["compile"], cfg["levels"]) == (224, False, 2)


def test_check_names_every_missing_input_of_the_paper_profile(tmp_path):
    "On a fresh clone with the paper profile, `qualiclip check` lists each missing input with what to do, and exits 1."
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini"); (tmp_path / "qualiclip").mkdir()
    r = subprocess.run([Q, "check", "--params", str(ROOT / "params" / "paper.yaml")], cwd=tmp_path, env=env_for(tmp_path),
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    from qualiclip.config import load_profile
    p = load_profile("paper")
    for d in p["datasets"]: assert f"[MISSING] data/datasets/{d} " in out, d
    for f in ("data/downloads/kadis700k.zip", "data/weights/RN50.pt", "data/niqe/modelparameters.mat", "data/released/qualiclip.pth"):
        assert f"[MISSING] {f} " in out, f
    assert out.count("to do: ") == len(p["datasets"]) + 4
    assert "qualiclip prepare koniq10k data/datasets/koniq10k --download" in out and "niqe_release.zip" in out
    n = len(p["datasets"]) + 4; assert f"{n} input(s) from you, {n} missing" in out
