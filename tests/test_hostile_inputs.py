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


def _two_pngs(folder):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate((b"ok.png", b"bad\xff.png")):   # the second name is not valid UTF-8
        with open(os.path.join(os.fsencode(str(folder)), name), "wb") as f: Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(f, "PNG")


SCORE = ["score", "--random-init", "--backbone", "qualiclip-tiny", "--device", "cpu"]


def test_score_writes_file_names_that_are_not_utf8(tmp_path):
    "A file name that is not UTF-8 is scored and written (its bytes escaped); the CSV is valid UTF-8."
    _two_pngs(tmp_path / "imgs")
    rc, out = q(*SCORE, tmp_path / "imgs", "--out", tmp_path / "s.csv", cwd=tmp_path)
    assert rc == 0, out[-2000:]
    import pandas as pd
    df = pd.read_csv(tmp_path / "s.csv", encoding="utf-8")
    assert len(df) == 2 and df.score.notna().all()
    assert any(p.endswith("bad\\xff.png") for p in df.path), df.path.tolist()


def test_score_checks_out_before_scoring(tmp_path):
    "--out naming a folder fails at once with exit 2, naming it; nothing is scored."
    _two_pngs(tmp_path / "imgs"); (tmp_path / "outdir").mkdir()
    rc, out = q(*SCORE, tmp_path / "imgs", "--out", tmp_path / "outdir", cwd=tmp_path)
    assert rc == 2 and "is a folder" in out and str(tmp_path / "outdir") in out, out[-2000:]
    assert "scored" not in out
    rc, out = q(*SCORE, tmp_path / "imgs", "--out", tmp_path / "s.csv", "--resize-short", "-5", cwd=tmp_path)
    assert rc == 2 and "--resize-short -5" in out and not (tmp_path / "s.csv").exists(), out[-2000:]


def test_score_keeps_rows_on_interrupt(tmp_path, monkeypatch):
    "Ctrl-C during scoring writes the rows scored so far, marks the others, and exits 130."
    import torch
    from qualiclip import scoring
    calls = []
    class Fake:
        name, device, higher_better = "fake", torch.device("cpu"), True
        def score_batch(self, x):
            calls.append(len(x))
            if len(calls) == 2: raise KeyboardInterrupt
            return x.float().mean(dim=(1, 2, 3))
    monkeypatch.setitem(scoring.SCORERS, "fake", lambda **kw: Fake())
    from PIL import Image
    (tmp_path / "imgs").mkdir()
    for i in range(4): Image.new("RGB", (32 + 32 * (i % 2), 32), (i * 50, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    rc = scoring.score_cmd([str(tmp_path / "imgs")], model="fake", out=str(tmp_path / "s.csv"), batch_size=2)
    assert rc == 130
    import pandas as pd
    df = pd.read_csv(tmp_path / "s.csv")
    assert len(df) == 4 and df.score.notna().sum() == 2
    assert (df.error[df.score.isna()] == "not scored: interrupted").all()


def test_nan_checkpoint_names_the_reason(tmp_path):
    "A checkpoint full of NaN gives failed rows whose error says why, not an empty error column."
    import torch
    from qualiclip.model import random_official_checkpoint
    ck = random_official_checkpoint(tmp_path / "nan.pth", "qualiclip-tiny")
    sd = torch.load(ck, weights_only=True)
    torch.save({k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in sd.items()}, ck)
    _two_pngs(tmp_path / "imgs")
    rc, out = q("score", tmp_path / "imgs", "--weights", ck, "--device", "cpu", "--out", tmp_path / "s.csv", cwd=tmp_path)
    import pandas as pd
    df = pd.read_csv(tmp_path / "s.csv")
    assert rc == 1 and df.score.isna().all(), out[-2000:]
    assert df.error.str.contains("non-finite score").all(), df.error.tolist()


def test_train_never_moves_a_folder_it_did_not_write(tmp_path):
    "`--out` naming a folder of the user's (files, no training run in it) is refused; nothing there is moved."
    mine = tmp_path / "photos"; mine.mkdir(); (mine / "holiday.jpg").write_bytes(b"the user's photo")
    rc, out = q("train", "--backbone", "qualiclip-tiny", "--pretrained", "none", "--crop", "64", "--levels", "2",
                "--batch-size", "2", "--steps", "1", "--val-repeats", "1", "--device", "cpu", "--out", mine,
                "--no-progress", cwd=tmp_path, timeout=240)
    assert rc == 2 and "is not a training run of this project" in out and str(mine) in out, out[-2000:]
    assert (mine / "holiday.jpg").read_bytes() == b"the user's photo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]          # no photos.prev-* beside it


def _without_dac():
    "Command prefix that runs a program without the capabilities that let root ignore file permissions."
    if os.geteuid() != 0: return []
    import shutil
    if not shutil.which("setpriv"): pytest.skip("running as root without setpriv: root reads any folder, so this case cannot be built")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]


def test_unlistable_folder_is_a_row_not_an_abort(tmp_path):
    "A folder that cannot be listed gets one error row naming it; the other images are scored (exit 1), with or without --recursive."
    from PIL import Image
    imgs = tmp_path / "imgs"; (imgs / "locked").mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(imgs / "a.png")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(imgs / "locked" / "b.png")
    os.chmod(imgs / "locked", 0)
    try:
        for args in ([imgs, "--recursive"], [imgs / "locked", imgs / "a.png"]):
            r = subprocess.run([*_without_dac(), Q, *SCORE, *map(str, args), "--out", str(tmp_path / "s.csv")], env=ENV,
                               capture_output=True, text=True, timeout=300)
            import pandas as pd
            df = pd.read_csv(tmp_path / "s.csv")
            assert r.returncode == 1, r.stdout + r.stderr
            assert df.score.notna().sum() == 1 and df.path.str.endswith("a.png").any()
            bad = df[df.score.isna()]
            assert len(bad) == 1 and bad.error.iloc[0].startswith(str(imgs / "locked")) and "cannot list the folder" in bad.error.iloc[0]
    finally:
        os.chmod(imgs / "locked", 0o755)


def test_huge_png_is_refused_before_decoding(tmp_path):
    "Two 12000x12000 PNGs (a few hundred KB each) get error rows at native resolution, without decoding; resized, they are scored."
    from PIL import Image
    imgs = tmp_path / "imgs"; imgs.mkdir()
    for i in range(2): Image.new("RGB", (12000, 12000), (i * 90, 40, 40)).save(imgs / f"huge{i}.png")
    assert (imgs / "huge0.png").stat().st_size < 2_000_000
    Image.new("RGB", (64, 64), (10, 200, 30)).save(imgs / "small.png")
    r = subprocess.run(["/usr/bin/time", "-f", "%M", Q, *SCORE, imgs, "--out", tmp_path / "s.csv"] if Path("/usr/bin/time").exists()
                       else [Q, *SCORE, imgs, "--out", tmp_path / "s.csv"], env=ENV, capture_output=True, text=True, timeout=300)
    import pandas as pd
    df = pd.read_csv(tmp_path / "s.csv")
    assert r.returncode == 1 and df.score.notna().sum() == 1, r.stdout + r.stderr
    for e in df.error[df.score.isna()]: assert "12000x12000 is 144 MP" in e and "--resize-short 512" in e and "huge" in e
    if Path("/usr/bin/time").exists():
        peak_kb = int(r.stderr.strip().splitlines()[-1])
        assert peak_kb < 3_000_000, peak_kb          # the 144 MP images were never decoded (a decode alone is 432 MB each)
    rc, out = q(*SCORE, imgs / "huge0.png", "--resize-short", "64", "--out", tmp_path / "r.csv", cwd=tmp_path)
    assert rc == 0, out[-2000:]


def test_folder_scan_names_what_it_cannot_read(tmp_path):
    "GIFs are scored (first frame); a HEIC without its plug-in and a broken link get rows that say why; --resize-short -5 is refused."
    from PIL import Image
    imgs = tmp_path / "imgs"; imgs.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(imgs / "anim.gif")
    (imgs / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    (imgs / "gone.jpg").symlink_to(imgs / "deleted.jpg")
    rc, out = q(*SCORE, imgs, "--out", tmp_path / "s.csv", cwd=tmp_path)
    import pandas as pd
    df = pd.read_csv(tmp_path / "s.csv").set_index("path")
    assert rc == 1 and len(df) == 3, out[-2000:]
    assert pd.notna(df.score[str(imgs / "anim.gif")])
    assert "broken symbolic link" in df.error[str(imgs / "gone.jpg")] and "deleted.jpg" in df.error[str(imgs / "gone.jpg")]
    try: import pillow_heif  # noqa: F401
    except ImportError: assert "pip install pillow-heif" in df.error[str(imgs / "phone.heic")]
    rc, out = q(*SCORE, imgs / "anim.gif", "--resize-short", "-5", "--out", tmp_path / "r.csv", cwd=tmp_path)
    assert rc == 2 and "--resize-short -5" in out


def test_params_errors_name_the_key(tmp_path):
    "Type errors and YAML mistakes in a profile give exit 2 and one line naming the key or line; a missing relative file is not replaced."
    base = "seed: 0\ndevice: cpu\nmodel:\n  backbone: qualiclip-tiny\ntrain:\n  crop: 64\n"
    cases = {"steps: \"abc\"": "train.steps='abc'", "lr: \"abc\"": "train.lr='abc'", "scale: 5": "train.scale=5",
             "betas: [0.9]": "train.betas=[0.9]", "steps: 3.7": "train.steps=3.7", "warmup_steps: -5": "train.warmup_steps=-5",
             "grad_clip: -1": "train.grad_clip", "batch_size: 2.5": "train.batch_size=2.5", "crop: 0": "train.crop=0"}
    for line, msg in cases.items():
        text = base.replace("  crop: 64\n", "") if line.startswith("crop") else base
        (tmp_path / "p.yaml").write_text(text + "  " + line + "\n")
        rc, out = q("train", "--params", "p.yaml", "--out", tmp_path / "run", cwd=tmp_path, timeout=120)
        assert rc == 2 and msg in out and "Traceback" not in out, (line, out[-1500:])
    (tmp_path / "p.yaml").write_text(base + "  lr: [0.1\n")
    rc, out = q("train", "--params", "p.yaml", cwd=tmp_path, timeout=120)
    assert rc == 2 and "not valid YAML at line" in out and "Traceback" not in out, out[-1500:]
    (tmp_path / "p.yaml").write_text("train: 5\n")
    rc, out = q("train", "--params", "p.yaml", cwd=tmp_path, timeout=120)
    assert rc == 2 and "train:" in out and "Traceback" not in out, out[-1500:]
    rc, out = q("train", "--params", "params.yaml", cwd=tmp_path, timeout=120)   # the repository has one; this folder has not
    assert rc == 2 and str(tmp_path / "params.yaml") in out and "does not exist" in out, out[-1500:]
