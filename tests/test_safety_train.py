"""Training, the explorer and the hub entry points given folders, files and inputs they must not trust: nothing the user
owns is moved or written, every refusal is one line naming the file or value and what to do."""
import contextlib
import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
from qualiclip import cli
from qualiclip.core import FOLDER_MARK, folder_mark, load_image

REPO = str(Path(__file__).resolve().parents[1])
TINY = ["--backbone", "qualiclip-tiny", "--pretrained", "none", "--crop", "64", "--levels", "2", "--batch-size", "2",
        "--val-repeats", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--no-progress", "--log-every", "1"]


def q(*args):
    "Run `qualiclip <args>` in this process: (exit code, stdout + stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue() + err.getvalue()


def snapshot(root: Path) -> dict:
    "Every path under root with its bytes (files) and modification time."
    res = {}
    for d, subs, files in os.walk(root):
        for n in subs + files:
            p = Path(d) / n
            res[str(p.relative_to(root))] = (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
    return res


@pytest.fixture
def no_work(monkeypatch):
    "Fail the test if a Trainer is built (the model and data are work that must come after the output check)."
    import qualiclip.train as T
    def trainer(*a, **k): raise AssertionError("a Trainer was built before the run folder was checked")
    monkeypatch.setattr(T, "Trainer", trainer)


def params_file(tmp_path: Path, out, **train) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "model": {"backbone": "qualiclip-tiny"},
                                 "train": {"pretrained": "none", "crop": 64, "levels": 2, "batch_size": 2, "steps": 2,
                                           "val_repeats": 1, "precision": "fp32", "workers": 0, "progress": False,
                                           "out": str(out), **train}}))
    return p


# 1. run folders ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["metrics.json", "dvclive/", "checkpoint.pt"])
@pytest.mark.parametrize("via", ["--out", "train.out"])
def test_a_folder_holding_run_file_names_is_not_a_run(tmp_path, no_work, content, via):
    "A user's folder holding a metrics.json, a dvclive/ or a checkpoint.pt (not ours) is refused before any work: nothing moved, nothing written."
    proj = tmp_path / "proj"; proj.mkdir(); (proj / "notes.txt").write_text("mine")
    if content.endswith("/"): (proj / content).mkdir(); (proj / content / "x.tsv").write_text("step\tx\n")
    elif content == "checkpoint.pt": torch.save({"weights": torch.zeros(3)}, proj / content)
    else: (proj / content).write_text("{}")
    args = ["train", *TINY, "--steps", "2", "--out", proj] if via == "--out" else ["train", "--params", params_file(tmp_path, proj)]
    before = snapshot(tmp_path)
    rc, out = q(*args)
    assert rc == 2, out
    assert f"{proj} is not empty and is not a training run of this project" in out and "nothing was moved or written" in out, out
    assert ("train.out of" in out) == (via == "train.out"), out
    assert len([l for l in out.splitlines() if "error" in l or "is not empty" in l]) == 1, out
    assert snapshot(tmp_path) == before and not list(tmp_path.glob("proj.prev-*"))


def test_library_calls_refuse_a_folder_that_is_not_a_run(tmp_path):
    "train() and move_aside() check the folder themselves (the pipeline's ablations call train directly)."
    from qualiclip.core import OutputError
    from qualiclip.train import TrainConfig, move_aside, train
    proj = tmp_path / "proj"; (proj / "dvclive").mkdir(parents=True); (proj / "metrics.json").write_text("{}")
    before = snapshot(tmp_path)
    cfg = TrainConfig(backbone="qualiclip-tiny", pretrained=None, crop=64, steps=2, device="cpu", out=str(proj), progress=False)
    for f in (lambda: train(cfg, resume="no"), lambda: move_aside(proj)):
        with pytest.raises(OutputError, match="is not a training run of this project"): f()
    assert snapshot(tmp_path) == before


def test_train_marks_its_run_and_moves_aside_only_marked_runs(tmp_path):
    "A new run folder carries the run mark; a run with other settings is moved aside to <name>.prev-<time>, never deleted."
    run = tmp_path / "run"
    rc, out = q("train", *TINY, "--steps", "2", "--out", run)
    assert rc == 0, out
    assert folder_mark(run)["kind"] == "run" and (run / "checkpoint.pt").is_file()
    rc, out = q("train", *TINY, "--steps", "2", "--lr", "0.5", "--out", run)   # other settings: moved aside
    assert rc == 0, out
    aside = list(tmp_path.glob("run.prev-*"))
    assert len(aside) == 1 and folder_mark(aside[0])["kind"] == "run" and (aside[0] / "checkpoint.pt").is_file()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["lr"] == 0.5


def test_a_run_of_an_earlier_version_is_adopted(tmp_path):
    "runs/demo of an earlier version (checkpoint.pt, metrics.json, dvclive/, no mark) is recognised by its checkpoint, marked and resumed."
    run = tmp_path / "demo"
    rc, out = q("train", *TINY, "--steps", "2", "--out", run)
    assert rc == 0, out
    (run / FOLDER_MARK).unlink()                                      # as an earlier version left it
    rc, out = q("train", *TINY, "--steps", "3", "--out", run)
    assert rc == 0, out
    assert "resuming" in out and torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3, out
    assert folder_mark(run) == {"project": "qualiclip", "kind": "run", "command": "qualiclip train", "adopted": "an earlier version"}
    assert not list(tmp_path.glob("demo.prev-*"))


# 2. messages of train -------------------------------------------------------------------------------------------------

def test_unreadable_val_pristine_is_named_before_anything_is_written(tmp_path):
    bad = tmp_path / "val"; bad.mkdir()
    for i in range(2): (bad / f"v{i}.png").write_bytes(b"not a png")
    rc, out = q("train", *TINY, "--steps", "2", "--val-pristine", bad, "--out", tmp_path / "run")
    assert rc == 2, out
    assert f"train.val_pristine {bad}: none of its 2 image file(s) could be read" in out and "--val-pristine" in out, out
    assert "make_pairs" not in out and not (tmp_path / "run").exists()


def test_a_damaged_training_log_is_named(tmp_path):
    "A resumed run whose dvclive TSV holds a damaged row stops with the file and line named; no log file is changed."
    run = tmp_path / "run"
    rc, out = q("train", *TINY, "--steps", "3", "--stop-at", "2", "--out", run)
    assert rc == 0, out
    tsv = run / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.write_text(tsv.read_text().replace("\n2\t", "\n2x\t"))
    before = snapshot(run / "dvclive")
    rc, out = q("train", *TINY, "--steps", "3", "--out", run)
    assert rc == 2, out
    assert f"{tsv}: line 3" in out and "is not a row of the training log; repair it, or delete that file" in out, out
    assert snapshot(run / "dvclive") == before


def test_a_section_that_is_not_a_mapping_is_one_line(tmp_path):
    p = params_file(tmp_path, tmp_path / "run")
    d = yaml.safe_load(p.read_text()); d["model"] = 5; p.write_text(yaml.safe_dump(d))
    rc, out = q("train", "--params", p)
    assert rc == 2, out
    assert f"`model:` in the params file {p} must be a mapping of keys" in out and "not the int 5" in out, out
    assert "Traceback" not in out and "internal error" not in out and "AttributeError" not in out, out


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0"),
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file write failed"),
    OSError(errno.ENOSPC, "No space left on device")], ids=["unexpected-pos", "file-write-failed", "ENOSPC"])
def test_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch, failure):
    "torch.save failing for want of space gives one line naming checkpoint.pt and saying the disk may be full."
    def full(*a, **k): raise failure
    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    rc, out = q("train", *TINY, "--steps", "2", "--ckpt-every", "1", "--val-every", "5", "--out", run)
    assert rc == 2, out
    assert f"{run / 'checkpoint.pt'} could not be written (the disk may be full: free some space)" in out, out
    assert "inline_container" not in out and "enforce fail" not in out, out
    assert not (run / "checkpoint.pt").exists() and not [p for p in run.iterdir() if p.name.startswith(".checkpoint.pt")]


# 3. the explorer's one decode path --------------------------------------------------------------------------------------

def _pictures(tmp_path: Path) -> dict:
    g = np.linspace(0, 65535, 80 * 60).reshape(60, 80).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")                     # 16-bit grey ramp: mean half-grey
    a = np.zeros((60, 80, 4), np.uint8); a[..., 2] = 180; a[..., 3] = np.linspace(0, 255, 80).astype(np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")            # blue, transparent on the left
    return {"g16": tmp_path / "g16.png", "rgba": tmp_path / "rgba.png"}


@pytest.mark.parametrize("name", ["g16", "rgba"])
def test_an_upload_decodes_like_the_same_file(tmp_path, name):
    from qualiclip.explore import load_source
    f = _pictures(tmp_path)[name]
    up, by_path = load_source(f.read_bytes(), None), load_source(str(f), None)
    assert torch.equal(up, by_path)
    assert torch.equal(by_path, load_image(f).mul(255).round().div(255))   # the core's loader, rounded to 8 bits
    if name == "g16": assert abs(float(up.mean()) - 0.5) < 0.01, float(up.mean())
    else: assert float(up[0, :, 0].mean()) > 0.99                      # fully transparent: composited on white


# 4. the explorer's messages -----------------------------------------------------------------------------------------------

def test_explore_refuses_a_huge_picture_from_its_header(tmp_path, monkeypatch):
    "A 12000x12000 PNG is refused before it is decoded (the header says its size), as a file and as an upload."
    from PIL import ImageFile
    from qualiclip.explore import load_source
    big = tmp_path / "big.png"; Image.new("1", (12000, 12000)).save(big)
    def no_decode(self, *a, **k): raise AssertionError("the picture was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    for src in (str(big), big.read_bytes()):
        with pytest.raises(ValueError, match="12000x12000 is 144 MP, above the 40 MP the explorer decodes"): load_source(src)
    rc, out = q("explore", big, "--weights", tmp_path / "none.pth", "--max-pixels", "100000000", "--out", tmp_path / "e.png")
    assert rc == 2 and "above the 100 MP the explorer decodes" in out and "--max-pixels" in out, out
    assert not (tmp_path / "e.png").exists()


def test_explore_checks_out_and_size_before_any_work(tmp_path):
    "--out naming a folder and --size -5 are named at once: no model is loaded (the weights file does not even exist)."
    folder = tmp_path / "figs"; folder.mkdir()
    rc, out = q("explore", "astronaut", "--weights", tmp_path / "none.pth", "--out", folder)
    assert rc == 2 and f"--out {folder} is a folder" in out and "none.pth" not in out, out
    assert list(folder.iterdir()) == []
    rc, out = q("explore", "astronaut", "--weights", tmp_path / "none.pth", "--size", "-5", "--out", tmp_path / "e.png")
    assert rc == 2 and "--size -5: give the shorter side of the picture in pixels, at least 32" in out, out
    assert "resize-short" not in out and not (tmp_path / "e.png").exists(), out


# 5. the hub entry points -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from qualiclip.model import TINY_CONFIG, random_official_checkpoint
    return random_official_checkpoint(tmp_path_factory.mktemp("hub") / "tiny.pth", TINY_CONFIG, seed=3)


@pytest.mark.parametrize("record", [None, "", "abc"], ids=["no-record", "empty-record", "short-record"])
def test_hub_refuses_a_cached_release_it_cannot_check(tmp_path, monkeypatch, tiny_ckpt, record):
    "A qualiclip.pth in torch.hub's cache with no usable SHA-256 record is refused, not loaded unchecked."
    from qualiclip.model import WeightsUnavailableError
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    d = Path(torch.hub.get_dir()) / "checkpoints"; d.mkdir(parents=True)
    shutil.copy(tiny_ckpt, d / "qualiclip.pth")
    if record is not None: (d / "qualiclip.pth.sha256").write_text(record)
    with pytest.raises(WeightsUnavailableError, match="no SHA-256 was recorded for it .* so it cannot be checked: delete it"):
        torch.hub.load(REPO, "QualiCLIP", source="local")
    assert (d / "qualiclip.pth").read_bytes() == Path(tiny_ckpt).read_bytes()   # the user's file is left as it was


def test_hub_names_the_expected_layout(tiny_ckpt):
    model = torch.hub.load(REPO, "QualiCLIP", source="local", weights=str(tiny_ckpt))
    with pytest.raises(ValueError, match=r"expects a batch of RGB images \(B,3,H,W\).*got shape \(2, 64, 64, 3\) "
                                         r"\(channels last\? use x.permute\(0, 3, 1, 2\)\)"):
        model(torch.rand(2, 64, 64, 3))
    with pytest.raises(ValueError, match=r"got shape \(3, 64, 64\) \(one image\? use x\[None\]\)"):
        model(torch.rand(3, 64, 64))
    assert model(torch.rand(2, 3, 64, 64)).shape == (2,)
