"""The output policy, over every command of the command table: hostile outputs are refused before any work, and nothing
the user owns is changed, moved or deleted. Driven by `qualiclip.cli.COMMANDS`, so a new command is covered as soon as
it is listed (and must declare its outputs with `qualiclip.core.writes`)."""
import contextlib
import functools
import inspect
import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from qualiclip import cli
from qualiclip.core import OUTPUT_KINDS, FOLDER_MARK, folder_mark

os.environ.setdefault("HF_HUB_OFFLINE", "1")
COMMANDS = sorted(cli.COMMANDS)


def _func(name):
    return cli.resolve_command(cli.COMMANDS[name])


def _inputs(root: Path) -> dict:
    "Real files of each kind, for the inputs of a call and for 'a file of another kind'."
    d = root / "in"; (d / "imgs").mkdir(parents=True)
    Image.new("RGB", (32, 24), (200, 40, 90)).save(d / "photo.png")
    Image.new("RGB", (32, 24), (20, 140, 90)).save(d / "imgs" / "a.png")
    (d / "scores.csv").write_text("path,score\na.png,0.5\n")
    (d / "params.yaml").write_text("seed: 0\n")
    torch.save({"w": torch.zeros(2)}, d / "w.pth")
    o = root / "other"; o.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(o / "other.png")
    (o / "other.csv").write_text("a,b\n1,2\n")
    torch.save({"w": torch.ones(2)}, o / "other.pth")
    return {"image": d / "photo.png", "folder": d / "imgs", "csv": d / "scores.csv", "params": d / "params.yaml",
            "checkpoint": d / "w.pth", "other_image": o / "other.png", "other_csv": o / "other.csv", "other_ckpt": o / "other.pth"}


def _input_for(name: str, f: dict) -> Path:
    "An existing file or folder for an input argument, by its name."
    if name in ("params",): return f["params"]
    if name.startswith("scores"): return f["csv"]
    if name in ("root", "folder", "run", "pristine", "val_pristine", "out"): return f["folder"]
    if name in ("weights", "a", "b", "compare_weights", "clipiqa_weights", "prompts", "pretrained", "niqe_params", "checksums"):
        return f["checkpoint"]
    return f["image"]


def _base_argv(func, f: dict) -> list:
    "Arguments for every required parameter (inputs get real files, other values a harmless word or number)."
    argv, ins = [], set(func.__inputs__)
    for n, p in inspect.signature(func).parameters.items():
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or n in func.__outputs__: continue
        flag = "--" + n.replace("_", "-")
        ann = str(p.annotation)
        val = str(_input_for(n, f)) if n in ins else ("1" if "int" in ann else "x")
        argv += [flag, val]
    return argv


def _snapshot(root: Path) -> dict:
    "Every file and folder under root: its bytes (files) and modification time."
    out = {}
    for d, subs, files in os.walk(root):
        for n in subs + files:
            p = Path(d) / n; st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), None if p.is_dir() else p.read_bytes(), st.st_mtime_ns)
    return out


def _other_kind(kind: str, f: dict) -> Path:
    "An existing file of another kind than the output's."
    if kind in ("folder", "run"): return f["other_csv"]
    return f["other_csv"] if kind == "image" else f["other_image"]


def _cases(func, name: str, kind_of, f: dict, cwd: Path) -> list:
    "(label, value, expected: 'refused' or 'accepted') for one output argument."
    canary = cwd / "canary_dir"
    cases = [("folder holding a canary", canary), (".", Path(".")), ("under a regular file", f["image"] / "sub" / "x.out")]
    ins = [n for n in func.__inputs__ if n in inspect.signature(func).parameters]
    if ins: cases.append(("one of its own inputs", _input_for(ins[0], f)))
    res = []
    for label, v in cases:
        kind = kind_of(str(v)) if callable(kind_of) else kind_of
        if kind is None: continue
        if label in ("folder holding a canary", "."):
            exp = "accepted" if kind == "folder" else "refused"
        else: exp = "refused"
        res.append((label, v, kind, exp))
    k = kind_of("x.csv") if callable(kind_of) else kind_of
    if k is not None: res.append(("an existing file of another kind", _other_kind(k, f), k, "refused"))
    return res


def _all_cases():
    out = []
    for name in COMMANDS:
        func = _func(name)
        for arg, kind in getattr(func, "__outputs__", {}).items():
            out.append(pytest.param(name, arg, id=f"{name.replace(' ', '-')}:{arg}"))
    return out


def test_every_command_declares_its_outputs():
    "Each command says what it writes (`writes`), and every argument that names an output is declared."
    for name in COMMANDS:
        func = _func(name)
        assert hasattr(func, "__outputs__") and hasattr(func, "__inputs__"), f"{name}: declare its outputs with @writes"
        sig = inspect.signature(func).parameters
        for a in list(func.__outputs__) + list(func.__inputs__):
            assert a in sig or a in getattr(getattr(func, "__config__", None), "__dataclass_fields__", {}), f"{name}: no argument {a}"
        for a in sig:
            if a == "out" or a.startswith("out_") or a in ("table", "metrics"):
                assert a in func.__outputs__ or a in func.__inputs__, f"{name}: its argument {a} is not declared"
        for kind in func.__outputs__.values():
            assert callable(kind) or kind in OUTPUT_KINDS, f"{name}: unknown output kind {kind}"


@pytest.mark.parametrize("name,arg", _all_cases())
def test_hostile_outputs(name, arg, tmp_path, monkeypatch, capsys):
    "Point each output at a canary folder, '.', an input, a path under a file and a file of another kind."
    func = _func(name)
    calls = []

    @functools.wraps(func)
    def stub(**kw):
        calls.append(kw); return 0
    monkeypatch.setattr(cli, "resolve_command", lambda spec: stub)
    f = _inputs(tmp_path)
    cwd = tmp_path / "work"; (cwd / "canary_dir").mkdir(parents=True)
    (cwd / "canary_dir" / "canary.txt").write_text("canary"); (cwd / "mine.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    base = _base_argv(func, f)
    for label, value, kind, expected in _cases(func, name, func.__outputs__[arg], f, cwd):
        before = _snapshot(tmp_path); calls.clear()
        rc = cli.main(name.split() + base + ["--" + arg.replace("_", "-"), str(value)])
        err = capsys.readouterr().err
        assert _snapshot(tmp_path) == before, f"{name} --{arg} {value} ({label}): files changed"
        if expected == "refused":
            assert rc == 2 and not calls, f"{name} --{arg} {value} ({label}, {kind}): not refused before any work: rc {rc}, {err}"
            assert str(value) in err and len(err.strip().splitlines()) == 1, f"{name} ({label}): {err!r}"
        else:
            assert rc == 0 and len(calls) == 1, f"{name} --{arg} {value} ({label}): refused: {err}"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    from qualiclip.model import TINY_CONFIG, random_official_checkpoint
    d = tmp_path_factory.mktemp("ck")
    random_official_checkpoint(d / "tiny.pth", TINY_CONFIG, seed=1); random_official_checkpoint(d / "tiny2.pth", TINY_CONFIG, seed=2)
    return d / "tiny.pth", d / "tiny2.pth"


@pytest.mark.parametrize("where", ["canary folder", "."])
def test_report_folder_adds_only_its_own_files(where, two_checkpoints, tmp_path, monkeypatch, capsys):
    "compare-weights into a folder of the user's (or '.'): the canary stays, only its four files are added, no mark."
    a, b = two_checkpoints
    out = tmp_path / "mine"; out.mkdir(); (out / "canary.txt").write_text("canary"); (out / "sub").mkdir()
    monkeypatch.chdir(out)
    before = _snapshot(out)
    assert cli.main(["compare-weights", str(a), str(b), "--out", "." if where == "." else str(out)]) == 0
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["comparison.json", "layers.csv", "layers.png", "tensors.csv"]
    assert folder_mark(out) is None        # a folder of the user's is not claimed as ours


def test_report_folder_new_is_marked_and_replaced_in_place(two_checkpoints, tmp_path, capsys):
    "A new report folder carries the mark; a second run replaces only its own files and says so."
    a, b = two_checkpoints
    out = tmp_path / "rep"
    assert cli.main(["compare-weights", str(a), str(b), "--out", str(out)]) == 0
    assert folder_mark(out)["kind"] == "output" and (out / FOLDER_MARK).exists()
    (out / "notes.txt").write_text("notes")
    assert cli.main(["compare-weights", str(b), str(a), "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "notes"
    assert "replacing the earlier comparison.json, layers.csv, tensors.csv, layers.png" in capsys.readouterr().err


def test_cli_error_lines(tmp_path, capsys):
    "Any exception from a command is one line (disk full said plainly, JSON errors with their line), exit 2."
    import errno
    import json
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "scores.csv"))
    assert cli.error_line(e) == f"error: disk full while writing {tmp_path / 'scores.csv'}; free some space and run again."
    try: json.loads('{"a": 1,\n "b": }')
    except json.JSONDecodeError as x: assert cli.error_line(x) == "error: invalid JSON at line 2, column 7 (Expecting value)."
    assert cli.error_line(TypeError("bad")).startswith("internal error: TypeError: bad")
    assert cli.error_line(RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1 vs 2")) == \
        "error: a file could not be written (is the disk full?); free some space and run again."


def test_sigterm_keeps_the_rows_scored_so_far(tmp_path, monkeypatch, capsys):
    "SIGTERM during scoring is handled like Ctrl-C: the rows scored so far are written, the others marked, exit 143."
    import signal
    import pandas as pd
    from qualiclip import scoring
    calls = []

    class Fake:
        name, device, higher_better = "fake", torch.device("cpu"), True
        def score_batch(self, x):
            calls.append(len(x))
            if len(calls) == 2: os.kill(os.getpid(), signal.SIGTERM)
            return x.float().mean(dim=(1, 2, 3))
    monkeypatch.setitem(scoring.SCORERS, "fake", lambda **kw: Fake())
    (tmp_path / "imgs").mkdir()
    for i in range(4): Image.new("RGB", (32 + 32 * (i % 2), 32), (i * 50, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    before = signal.getsignal(signal.SIGTERM)
    rc = cli.main(["score", str(tmp_path / "imgs"), "--model", "fake", "--out", str(tmp_path / "s.csv"), "--batch-size", "2"])
    assert rc == 143 and signal.getsignal(signal.SIGTERM) is before
    df = pd.read_csv(tmp_path / "s.csv")
    assert len(df) == 4 and df.score.notna().sum() == 2
    assert (df.error[df.score.isna()] == "not scored: interrupted").all()


@pytest.mark.parametrize("exc,start", [(ValueError("x.csv: the column mos is missing; fix it there."), "error: x.csv: the column mos"),
                                       (TypeError("unsupported operand"), "internal error: TypeError: unsupported operand")])
def test_any_error_from_a_command_is_one_line(exc, start, monkeypatch, capsys):
    "Whatever a command raises, the user gets one line on stderr and exit 2 (an internal error says how to see the traceback)."
    func = _func("gmad")

    @functools.wraps(func)
    def boom(**kw): raise exc
    monkeypatch.setattr(cli, "resolve_command", lambda spec: boom)
    monkeypatch.delenv("QUALICLIP_DEBUG", raising=False)
    assert cli.main(["gmad", "a.csv", "b.csv", "--out", "newdir"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"qualiclip gmad: {start}"), err


@pytest.mark.parametrize("command", ["gmad", "gradcam"])
def test_report_files_of_another_kind_are_refused_before_any_work(command, tmp_path, monkeypatch, capsys):
    "A report folder where one of the command's own file names holds a file of another kind: refused before any work."
    out = tmp_path / "rep"; out.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    if command == "gmad":
        (out / "gmad_pairs.csv").write_bytes((tmp_path / "p.png").read_bytes())        # an image where a CSV is due
        (tmp_path / "a.csv").write_text("path,score\nx,1\n"); (tmp_path / "b.csv").write_text("path,score\nx,2\n")
        argv = ["gmad", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(out)]
    else:
        (out / "p_ours.png").write_text("my notes")                                    # text where an overlay is due
        argv = ["gradcam", str(tmp_path / "p.png"), "--weights", str(tmp_path / "none.pth"), "--out", str(out)]
    before = _snapshot(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "not image" in err or "not csv" in err, err
    assert _snapshot(tmp_path) == before
