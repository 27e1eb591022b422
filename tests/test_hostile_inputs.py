"""Commands given hostile or broken inputs: nothing the user owns is deleted, nothing hangs, errors name the file."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
Q = str(BIN / "qualiclip") if (BIN / "qualiclip").exists() else "qualiclip"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")


def q(*args, cwd, timeout=300):
    r = subprocess.run([Q, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def test_prepare_demo_never_erases_a_folder(tmp_path):
    "`qualiclip prepare demo DIR` on a folder holding other files refuses, and the files stay."
    x = tmp_path / "x"; (x / "sub").mkdir(parents=True); (x / "keep.txt").write_text("keep")
    rc, out = q("prepare", "demo", x, "--size", "32", cwd=tmp_path)
    assert rc != 0 and "not empty" in out and str(x) in out, out
    assert (x / "keep.txt").read_text() == "keep" and (x / "sub").is_dir()
    (tmp_path / "mine.txt").write_text("mine")
    rc, out = q("prepare", "demo", ".", "--size", "32", cwd=tmp_path)        # the current folder
    assert rc != 0 and (tmp_path / "mine.txt").read_text() == "mine" and (x / "keep.txt").exists(), out


def test_train_stops_when_no_pristine_image_is_readable(tmp_path):
    "A pristine folder of unreadable files ends training with one error naming the folder, instead of looping forever."
    bad = tmp_path / "bad"; bad.mkdir()
    for i in range(4): (bad / f"b{i}.png").write_bytes(b"not a png")
    rc, out = q("train", "--backbone", "qualiclip-tiny", "--pretrained", "none", "--pristine", bad, "--crop", "64",
                "--levels", "2", "--batch-size", "2", "--steps", "3", "--val-repeats", "1", "--device", "cpu",
                "--precision", "fp32", "--out", tmp_path / "run", "--no-progress", cwd=tmp_path, timeout=240)
    assert rc == 2, out[-2000:]
    assert "No batch of readable pristine images" in out and str(bad) in out, out[-2000:]


def test_unpacking_never_replaces_a_folder_with_a_file(tmp_path):
    "An archive member that is a file where the root holds a folder of that name is refused; the folder is untouched."
    from qualiclip.datasets import ArchiveError, safe_extract
    root = tmp_path / "root"; (root / "kadid10k" / "mine").mkdir(parents=True)
    (root / "kadid10k" / "mine" / "n.txt").write_text("notes")
    z = tmp_path / "kadid10k.zip"
    with zipfile.ZipFile(z, "w") as f: f.writestr("kadid10k", b"a file, not a folder")
    with pytest.raises(ArchiveError, match="is a file where"):
        safe_extract(z, root)
    assert (root / "kadid10k" / "mine" / "n.txt").read_text() == "notes"
    assert sorted(p.name for p in root.iterdir()) == ["kadid10k"]      # no temporary folder left behind
