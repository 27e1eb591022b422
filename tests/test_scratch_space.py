"""No test run and no smoke run leaves its scratch files on the machine, and the smoke run checks its disk first.

A run that fills the disk fails late and takes the next run down with it (a checkpoint of the paper-smoke ablations could
not be written because earlier runs had left tens of GB in /tmp). So: `make test`'s commands run with TMPDIR set to a
folder removed at the end, pass or fail; `tools/paper_smoke.py` measures the disk before any work and removes its scratch
copy at the end, pass or fail, unless --keep names one.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def paper_smoke():
    spec = importlib.util.spec_from_file_location("paper_smoke", ROOT / "tools" / "paper_smoke.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def makefile_rule(name: str) -> str:
    "A Makefile variable's value or a target's recipe, continuation lines joined, as the shell gets it ($$ -> $); make never runs."
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    lines = text.splitlines()
    if name.isupper(): body = next(l.split("=", 1)[1] for l in lines if l.startswith(f"{name} ="))
    else:
        i = next(i for i, l in enumerate(lines) if l.startswith(f"{name}:"))
        recipe = []
        for l in lines[i + 1:]:
            if not l.startswith("\t"): break
            recipe.append(l[1:])
        body = "\n".join(recipe)
    return body.replace("$$", "$")


@pytest.mark.parametrize("target", ["test", "test-slow", "test-gpu"])
def test_test_targets_run_in_a_temporary_folder_removed_pass_or_fail(tmp_path, target):
    "Each test target runs its commands under IN_TEST_TMP: TMPDIR = a fresh folder under the caller's TMPDIR, gone afterwards, pass or fail."
    assert makefile_rule(target).startswith("@$(IN_TEST_TMP) "), makefile_rule(target)
    prefix = makefile_rule("IN_TEST_TMP").strip()
    probe = (f"{sys.executable} -c \"import tempfile, pathlib, sys; d = tempfile.mkdtemp(); "
             f"pathlib.Path(d, 'ckpt').write_bytes(b'x' * 1000); print(d); sys.exit(int(sys.argv[1]))\"")
    for code in (0, 3):
        r = subprocess.run(["bash", "-c", f"{prefix} {probe} {code}"], capture_output=True, text=True,
                           env=dict(os.environ, TMPDIR=str(tmp_path)))
        made = Path(r.stdout.strip().splitlines()[-1])
        assert made.parent.parent == tmp_path and made.parent.name.startswith("qualiclip-test."), r.stdout
        assert (r.returncode == 0) == (code == 0), (code, r.returncode)
        assert list(tmp_path.iterdir()) == [], f"{target} left {list(tmp_path.iterdir())} (exit {code})"


def test_paper_smoke_disk_need_counts_every_training_run():
    ps = paper_smoke()
    from qualiclip.config import load_profile
    smoke = load_profile(ROOT / "params" / "paper-smoke.yaml")
    assert len(smoke["ablations"]) == 14
    assert ps.need_bytes(smoke) == int(2.5e9) + 15 * int(1.55e9) == 25_750_000_000
    assert ps.need_bytes({"ablations": {}}) == int(2.5e9) + int(1.55e9)


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("free,ok", [(14_899_999_999, False), (14_900_000_000, True)])
def test_paper_smoke_room_check(tmp_path, monkeypatch, free, ok):
    ps = paper_smoke()
    monkeypatch.setattr(ps.shutil, "disk_usage", lambda p: Usage(10**12, 0, free))
    why = ps.room_error(tmp_path, 14_900_000_000)
    assert (why is None) == ok
    if not ok: assert str(tmp_path) in why and "14.9 GB" in why and "free 0.0 GB" in why


def test_paper_smoke_stops_before_any_work_when_the_disk_is_short(tmp_path, monkeypatch, capsys):
    ps = paper_smoke()
    monkeypatch.setattr(ps.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ps.shutil, "disk_usage", lambda p: Usage(10**12, 0, 10**9))
    monkeypatch.setattr(ps, "run", lambda *a: pytest.fail("the run started on a disk without room"))
    assert ps.main([]) == 2
    err = capsys.readouterr().err
    assert "has 1.0 GB free and the run needs about 25.8 GB" in err and "free 24.8 GB" in err
    assert list(tmp_path.iterdir()) == []                                # its scratch folder is gone too


@pytest.mark.parametrize("outcome", ["fails", "raises", "passes"])
def test_paper_smoke_removes_its_scratch_copy_pass_or_fail(tmp_path, monkeypatch, outcome):
    ps = paper_smoke()
    monkeypatch.setattr(ps.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ps, "room_error", lambda folder, need: None)
    def fake_run(repo, name, keep):
        (repo / "runs").mkdir(parents=True); (repo / "runs" / "checkpoint.pt").write_bytes(b"x" * 1000)
        if outcome == "raises": raise KeyboardInterrupt
        return 1 if outcome == "fails" else 0
    monkeypatch.setattr(ps, "run", fake_run)
    if outcome == "raises":
        with pytest.raises(KeyboardInterrupt): ps.main([])
    else: assert ps.main([]) == (1 if outcome == "fails" else 0)
    assert list(tmp_path.iterdir()) == []
    keep = tmp_path / "kept"                                             # --keep: the named folder stays, whatever happened
    if outcome == "raises":
        with pytest.raises(KeyboardInterrupt): ps.main(["--keep", str(keep)])
    else: ps.main(["--keep", str(keep)])
    assert (keep / "repo" / "runs" / "checkpoint.pt").stat().st_size == 1000
