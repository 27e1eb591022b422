"""The pipeline commands never delete or replace what is not theirs, check every output before any work, and say
what is wrong with a params file, a weights file, a link or a metrics file in one line (never a traceback)."""
import inspect
import json
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from qualiclip import pipeline as pl
from qualiclip.cli import main
from qualiclip.core import OutputError, save_image


@pytest.fixture
def repo(tmp_path, monkeypatch):
    "A scratch repository root: every params path resolves under it."
    monkeypatch.setenv("QUALICLIP_ROOT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(repo: Path, d, name="p.yaml") -> str:
    f = repo / name
    f.write_text(d if isinstance(d, str) else yaml.safe_dump(d))
    return str(f)


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if ": error: " in l or "internal error" in l]
    assert len(lines) == 1, err
    return lines[0]


# ---- one validation of the profile's section types, for check, standin, unpack and summary

WRONG = [  # (a params file, the key its message must name)
    ("prepare: [1, 2]", "prepare"), ("train: hello", "train"), ("model: {start: openai}", "model.start"),
    ("evaluate: {models: [a, b]}", "evaluate.models"), ("model: hello", "model"), ("pristine: [x]", "pristine"),
    ("evaluate: 5", "evaluate"), ("datasets: live", "datasets"), ("datasets: [1, 2]", "datasets[0]"),
    ("prepare: {root: [a]}", "prepare.root"), ("train: {pristine: [a]}", "train.pristine"), ("train: {out: {a: 1}}", "train.out"),
    ("evaluate: {models: {a: {scorer: niqe}}}", "evaluate.models.a.weights"),
    ("evaluate: {models: {a: {scorer: niqe, weights: [a]}}}", "evaluate.models.a.weights"),
    ("paper: [a]", "paper"), ("paper: {T1_opinion_unaware: [x]}", "paper.T1_opinion_unaware"),
    ("paper: {T1_opinion_unaware: {out_md: [x]}}", "paper.T1_opinion_unaware.out_md"),
    ("model: {start: {openai: [a]}}", "model.start.openai"), ("evaluate: {models: {r: 5}}", "evaluate.models.r"),
    ("seed: hello", "seed"), ("pristine: {demo_dir: [a]}", "pristine.demo_dir"), ("prepare: {pools: [a]}", "prepare.pools"),
    ("ablations: [a]", "ablations"), ("ablations: {full: 3}", "ablations.full"), ("model: {backbone: [a]}", "model.backbone"),
    ("evaluate: {models: {r: {scorer: qualiclip, weights: w, datasets: live}}}", "evaluate.models.r.datasets"),
    ("device: [cpu]", "device"), ("train: {pristine: data/k.zip, out: 7}", "train.out"), ("train: {lr: fast}", "train.lr"),
]


@pytest.mark.parametrize("cmd", ["check", "standin", "unpack", "summary"])
@pytest.mark.parametrize("text,key", WRONG, ids=[k for _, k in WRONG])
def test_wrongly_typed_params_are_one_line_naming_the_key(repo, capsys, cmd, text, key):
    f = write_params(repo, text + "\n")
    rc, out, err = cli(capsys, cmd, "--params", f)
    line = error_line(err)
    assert rc == 2 and "internal error" not in err, err
    assert line.startswith(f"qualiclip {cmd}: error: {f}: {key} is "), line
    assert "it must be" in line and "params file" in line, line
    assert not list(repo.glob("data")) and not list(repo.glob("runs")), "nothing may be written"


def test_the_repository_profiles_pass_the_check():
    root = Path(pl.__file__).resolve().parent.parent
    from qualiclip.config import load_profile
    for f in [root / "params.yaml", *sorted((root / "params").glob("*.yaml"))]:
        assert load_profile(str(f))["profile"]


# ---- check: an empty or truncated weights file is not [ok]

def _zip_bytes() -> bytes:
    import io
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("archive/data.pkl", os.urandom(4096))
    return b.getvalue()


@pytest.mark.parametrize("content,note", [(b"", "empty file (0 bytes"), ("half", "truncated archive"),
                                          (b"not weights\n", "holds text, not a PyTorch checkpoint")])
def test_check_says_missing_for_an_unusable_weights_file(repo, capsys, content, note):
    w = repo / "data/weights/RN50.pt"
    w.parent.mkdir(parents=True)
    w.write_bytes(_zip_bytes()[:600] if content == "half" else content)
    f = write_params(repo, {"model": {"backbone": "qualiclip-tiny", "start": {"openai": "data/weights/RN50.pt"}}})
    rc, out, err = cli(capsys, "check", "--params", f)
    assert rc == 1 and "[MISSING] data/weights/RN50.pt" in out and "[ok]" not in out, out
    assert note in out, out
    before = w.read_bytes()
    rc, out, err = cli(capsys, "standin", "--params", f)                  # a user's file: left as it is, named
    assert rc == 0 and w.read_bytes() == before and "left as it is" in err, err
    w.write_bytes(_zip_bytes())
    rc, out, err = cli(capsys, "check", "--params", f)
    assert rc == 0 and "[ok] data/weights/RN50.pt" in out, out


# ---- standin: links, checks before work, no file of its own left behind

def test_standin_fills_a_link_to_an_empty_folder_and_names_a_dangling_one(repo, capsys):
    (repo / "disk/kadid").mkdir(parents=True)
    (repo / "data/datasets").mkdir(parents=True)
    (repo / "data/datasets/kadid10k").symlink_to(repo / "disk/kadid")
    (repo / "data/datasets/csiq").symlink_to(repo / "disk/none")
    f = write_params(repo, {"datasets": ["kadid10k", "csiq"]})
    rc, out, err = cli(capsys, "standin", "--params", f, "--n", "2", "--size", "48", "64")
    assert rc == 0, err
    assert (repo / "data/datasets/kadid10k").is_symlink() and any((repo / "disk/kadid").rglob("*.png"))
    assert "data/datasets/csiq is a symbolic link to" in err and "which does not exist" in err, err
    assert (repo / "data/datasets/csiq").is_symlink() and not (repo / "disk/none").exists()
    rc, out, err = cli(capsys, "check", "--params", f)
    assert "[ok] data/datasets/kadid10k" in out and "[MISSING] data/datasets/csiq" in out, out
    assert "symbolic link to" in out


def test_standin_checks_every_output_before_writing_the_first(repo, capsys):
    (repo / "data").mkdir()
    (repo / "data/weights").write_text("a file where the weights folder goes\n")
    f = write_params(repo, {"model": {"backbone": "qualiclip-tiny", "start": {"openai": "data/weights/RN50.pt"}},
                            "datasets": ["kadid10k"]})
    rc, out, err = cli(capsys, "standin", "--params", f, "--n", "2", "--size", "48", "64")
    line = error_line(err)
    assert rc == 2 and "data/weights" in line and "is a file, not a folder" in line, err
    assert not (repo / "data/datasets").exists()                        # the dataset stand-in was not written either


def test_standin_pool_without_archive_leaves_no_file_of_its_own(repo, capsys):
    (repo / "data/kadis700k").mkdir(parents=True)
    mine = repo / "data/kadis700k/.standin-kadis700k.zip"
    mine.write_bytes(b"the user's own file")
    f = write_params(repo, {"train": {"pristine": "data/kadis700k/ref_imgs"}})
    rc, out, err = cli(capsys, "standin", "--params", f)
    assert rc == 0, err
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in (repo / "data/kadis700k").iterdir()) == [".standin-kadis700k.zip", "ref_imgs"]
    assert len(list((repo / "data/kadis700k/ref_imgs").glob("*.png"))) == 6


# ---- unpack: links are followed or named, never blamed on the archive

@pytest.fixture
def pool_profile(repo):
    pl.standin_pool_archive(repo / "data/downloads/kadis700k.zip", n=2, short=32)
    (repo / "data/kadis700k").mkdir(parents=True)
    return write_params(repo, {"train": {"pristine": "data/kadis700k/ref_imgs"}})   # a folder; `unpack --archive` fills it


def test_unpack_into_a_link_to_an_empty_folder(repo, capsys, pool_profile):
    (repo / "disk/pool").mkdir(parents=True)
    (repo / "data/kadis700k/ref_imgs").symlink_to(repo / "disk/pool")
    rc, out, err = cli(capsys, "unpack", "--params", pool_profile)
    assert rc == 0 and "(2 files)" in out, out + err
    assert (repo / "data/kadis700k/ref_imgs").is_symlink() and len(list((repo / "disk/pool").glob("*.png"))) == 2


def test_unpack_names_a_dangling_link_not_the_archive(repo, capsys, pool_profile):
    (repo / "data/kadis700k/ref_imgs").symlink_to(repo / "disk/none")
    rc, out, err = cli(capsys, "unpack", "--params", pool_profile)
    line = error_line(err)
    assert rc == 2 and "train.pristine" in line and "symbolic link to" in line and "damaged" not in line, err
    assert (repo / "data/kadis700k/ref_imgs").is_symlink() and not (repo / "disk/none").exists()


def test_unpack_never_replaces_a_file_at_the_pool_path(repo, capsys, pool_profile):
    (repo / "data/kadis700k/ref_imgs").write_text("mine\n")
    rc, out, err = cli(capsys, "unpack", "--params", pool_profile)
    assert rc == 2 and (repo / "data/kadis700k/ref_imgs").read_text() == "mine\n", err


# ---- index / index-pool: an earlier index, or any file, survives an incomplete folder

@pytest.fixture
def dataset(repo):
    from qualiclip.datasets import miniature
    miniature("kadid10k", repo / "ds", n=2, size=(48, 64))
    return repo / "ds"


def test_index_keeps_an_earlier_index_when_images_are_missing(repo, capsys, dataset):
    (repo / "idx").mkdir()
    rc, out, err = cli(capsys, "index", "kadid10k", dataset, repo / "idx/k.csv")
    assert rc == 0, err
    good = (repo / "idx/k.csv").read_bytes()
    next(dataset.rglob("I01_*.png")).unlink()
    rc, out, err = cli(capsys, "index", "kadid10k", dataset, repo / "idx/k.csv")
    assert rc == 1 and "left as it was" in err, err
    assert (repo / "idx/k.csv").read_bytes() == good
    notes = repo / "idx/notes.txt"
    notes.write_text("a user's notes\n")
    rc, out, err = cli(capsys, "index", "kadid10k", dataset, notes)
    assert rc == 1 and notes.read_text() == "a user's notes\n", err
    assert sorted(p.name for p in (repo / "idx").iterdir()) == ["k.csv", "notes.txt"]   # no temporary file left


def test_index_refuses_a_file_of_another_kind_before_reading(repo, dataset):
    from PIL import Image
    png = repo / "photo.csv"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    before = png.read_bytes()
    with pytest.raises(OutputError, match="holds image"):
        pl.index_cmd("kadid10k", str(dataset), str(png))
    assert png.read_bytes() == before


def test_index_pool_checks_its_list_before_listing(repo, capsys):
    from PIL import Image
    from qualiclip.core import write_demo_photos
    write_demo_photos(repo / "pool", "val")
    png = repo / "list.csv"
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    before = png.read_bytes()
    with pytest.raises(OutputError, match="holds image"):                  # a direct call checks it too
        pl.index_pool(repo / "pool", png)
    assert png.read_bytes() == before
    png.unlink()
    rc, out, err = cli(capsys, "index-pool", repo / "pool", png)
    assert rc == 0, err
    good = png.read_bytes()
    for p in (repo / "pool").glob("*.png"): p.unlink()
    rc, out, err = cli(capsys, "index-pool", repo / "pool", png)
    assert rc == 2 and "No image files" in err and png.read_bytes() == good, err


# ---- pristine: only its own files

def test_pristine_never_replaces_a_user_file_at_a_demo_name(repo, capsys):
    from PIL import Image
    own = repo / "out/train/astronaut.png"
    own.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(own)
    (repo / "out/train/notes.txt").write_text("mine\n")
    before = own.read_bytes()
    rc, out, err = cli(capsys, "pristine", "--out", repo / "out")
    line = error_line(err)
    assert rc == 2 and "astronaut.png" in line and "not the demo photo" in line, err
    assert own.read_bytes() == before and sorted(p.name for p in (repo / "out/train").iterdir()) == ["astronaut.png", "notes.txt"]
    assert not (repo / "out/val").exists()                              # nothing was written
    own.unlink()
    rc, out, err = cli(capsys, "pristine", "--out", repo / "out")
    assert rc == 0 and (repo / "out/train/notes.txt").read_text() == "mine\n", err
    stamp = {p: p.stat().st_mtime_ns for p in (repo / "out").rglob("*.png")}
    rc, out, err = cli(capsys, "pristine", "--out", repo / "out")       # its own earlier output: kept as it is
    assert rc == 0 and stamp == {p: p.stat().st_mtime_ns for p in (repo / "out").rglob("*.png")}, err


# ---- init: its two files, derived from the params file, are checked before the model is built

def test_init_never_replaces_a_user_file_in_init_dir(repo, capsys):
    (repo / "runs/init").mkdir(parents=True)
    mine = repo / "runs/init/clip.pt"
    mine.write_text("my notes, not weights\n")
    f = write_params(repo, {"seed": 0, "model": {"backbone": "qualiclip-tiny", "start": {"random": "qualiclip/model.py"},
                                                   "init_dir": "runs/init"}})
    rc, out, err = cli(capsys, "init", "--params", f)
    line = error_line(err)
    assert rc == 2 and "clip.pt" in line and "holds text" in line, err
    assert mine.read_text() == "my notes, not weights\n" and not (repo / "runs/init/qualiclip.pth").exists()


def test_init_names_an_empty_weights_file(repo, capsys):
    (repo / "data/weights").mkdir(parents=True)
    (repo / "data/weights/RN50.pt").write_bytes(b"")
    f = write_params(repo, {"model": {"backbone": "qualiclip-tiny", "start": {"openai": "data/weights/RN50.pt"},
                                      "init_dir": "runs/init"}})
    rc, out, err = cli(capsys, "init", "--params", f)
    line = error_line(err)
    assert rc == 2 and "data/weights/RN50.pt" in line and "empty file" in line, err
    assert not (repo / "runs").exists()


# ---- paper: the executed notebooks folder

def test_paper_never_replaces_a_user_notebook(tmp_path, monkeypatch):
    monkeypatch.delenv("QUALICLIP_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    from qualiclip.config import load_profile
    f = write_params(tmp_path, load_profile("demo"))   # F3 on the demo dataset, evaluations under outputs/eval
    out = tmp_path / "nb"
    out.mkdir()
    for name in ("F3_gmad.ipynb", "F3_gmad.failed.ipynb"):
        mine = out / name
        mine.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        with pytest.raises(OutputError, match="not a notebook executed by `qualiclip paper`"):
            pl.paper_cmd("F3_gmad", f, out=str(out), kernel="no-such-kernel")
        assert json.loads(mine.read_text())["metadata"] == {}
        mine.rename(out / f"kept-{name}")
    assert sorted(p.name for p in out.iterdir()) == ["kept-F3_gmad.failed.ipynb", "kept-F3_gmad.ipynb"]


# ---- summary: a broken metrics.json is one line naming the file

@pytest.mark.parametrize("text,says", [
    ("null", "holds None"), ("[1, 2]", "holds [1, 2] (a list)"),
    ('{"step": 3, "best_val_srcc": 0.5, "train_time_s": "12 min"}', "train_time_s is '12 min' (text), not a number"),
    ('{"step": 3,\n "best_val_srcc": 0.5,,\n}', "invalid JSON at line 2"),
])
def test_summary_names_a_broken_metrics_file(repo, capsys, text, says):
    (repo / "runs/x").mkdir(parents=True)
    (repo / "runs/x/metrics.json").write_text(text)
    f = write_params(repo, {"train": {"out": "runs/x"}})
    rc, out, err = cli(capsys, "summary", "--params", f)
    line = error_line(err)
    assert rc == 2 and "runs/x/metrics.json" in line and says in line and "internal error" not in err, err


def test_summary_skips_a_comparison_file_of_another_shape(repo, capsys):
    (repo / "outputs/weights").mkdir(parents=True)
    (repo / "outputs/weights/comparison.json").write_text("[1, 2]")
    rc, out, err = cli(capsys, "summary", "--params", write_params(repo, {"train": {"out": "runs/x"}}))
    assert rc == 1 and "error" not in err and "What training changed" not in out, err


# ---- the mechanism: nothing in the module deletes a path it did not create

def test_pipeline_deletes_nothing():
    src = inspect.getsource(pl)
    assert "rmtree" not in src and ".unlink(" not in src and ".rmdir(" not in src
