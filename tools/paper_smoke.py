"""The paper profile end to end at smoke scale, in a scratch copy of the repository (`make paper-smoke`).

    python tools/paper_smoke.py [--keep DIR] [--params FILE]

Copies the working tree (tracked and untracked files, not ignored ones) into a scratch git repository, then runs what a
user of the paper profile runs, with no make: `qualiclip profile paper-smoke` (or --params NAME: paper-smoke-gpu runs the
same on a GPU, bf16, compiled) writes its params.yaml, `qualiclip standin` (stand-ins for every input, at the documented
paths), `qualiclip check` (must pass), `dvc repro`, and a second `dvc repro` that must re-run nothing but the pool listing.
The first `dvc repro` is traced (QUALICLIP_TRACE): every stage's dvc.yaml dependencies must hold each qualiclip module
whose code ran under its command (`qualiclip.pipeline.missing_stage_deps`). It prints the time of each step and of
each stage, and exits non-zero when any of it fails.

Disk: every training run of the profile (the main one and each ablation) writes about 1.5 GB with RN50, so the run first
checks that the scratch folder's disk has room for all of them (`need_bytes`) and stops at once, saying how much is
missing, when it has not. The scratch copy is removed at the end, pass or fail, unless --keep names a folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# stages dvc.yaml marks `always_changed` (they list the training pool by size and time instead of DVC hashing it): they run
# on every `dvc repro`, and what depends on them re-runs only when the list changed
ALWAYS_RUN = {'index_pool'}
BIN = Path(sys.executable).parent
# measured on a paper-smoke run (RN50): a training run's folder holds checkpoint.pt (0.71 GB: the weights and the
# optimiser's state), best.pth and qualiclip.pth (0.41 GB each); the rest (datasets' stand-ins, runs/init, the DVC cache,
# outputs) came to 2.4 GB
RUN_BYTES, BASE_BYTES = int(1.55e9), int(2.5e9)


def need_bytes(profile: dict) -> int:
    "Disk the smoke run of `profile` needs: one training run plus one per ablation, and the rest."
    return BASE_BYTES + RUN_BYTES * (1 + len(profile.get('ablations') or {}))


def room_error(folder: Path, need: int) -> str | None:
    "Why `folder`'s disk cannot hold `need` bytes (one line saying what to do), or None when it can."
    free = shutil.disk_usage(folder).free
    if free >= need: return None
    return (f"paper-smoke: {folder} has {free / 1e9:.1f} GB free and the run needs about {need / 1e9:.1f} GB (each "
            f"training run writes ~{RUN_BYTES / 1e9:.1f} GB): free {(need - free) / 1e9:.1f} GB, or give --keep a folder "
            "on a disk with room")


def sh(cmd: list, cwd: Path, env: dict) -> tuple[int, str, list]:
    "Run a command, echoing its output with the time of each line; return (rc, output, [(t, line)])."
    t0 = time.time(); lines = []
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in p.stdout:
        lines.append((time.time() - t0, line.rstrip('\n')))
        print(line, end='', flush=True)
    return p.wait(), '\n'.join(l for _, l in lines), lines


def stage_times(lines: list, total: float) -> list:
    "(stage, seconds) from `dvc repro` output: each stage runs from its 'Running stage' line to the next one."
    starts = [(t, l.split("'")[1]) for t, l in lines if l.startswith("Running stage '")]
    return [(name, (starts[i + 1][0] if i + 1 < len(starts) else total) - t) for i, (t, name) in enumerate(starts)]


def check_deps(repo: Path, trace: Path) -> int:
    "Compare what each stage ran (the trace) with its declared module dependencies (dvc.lock); 1 when one is missing."
    import yaml
    from qualiclip.pipeline import missing_stage_deps, traced_modules
    lock = yaml.safe_load((repo / 'dvc.lock').read_text())
    missing, untraced = missing_stage_deps(lock, traced_modules(trace))
    n = len(lock.get('stages') or {})
    print(f"\n=== stage dependencies: {n - len(untraced)} of {n} stages traced; "
          f"{'every one declares the modules it ran' if not missing else str(len(missing)) + ' miss some'}"
          + (f" (no record: {', '.join(untraced)})" if untraced else ''), flush=True)
    for st, mods in missing.items():
        print(f"paper-smoke: stage {st} ran {', '.join('qualiclip/' + m for m in mods)} but dvc.yaml does not list "
              f"{'it' if len(mods) == 1 else 'them'} among its deps: add {'it' if len(mods) == 1 else 'them'}", file=sys.stderr)
    return 1 if missing else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--keep', help='scratch folder to use and keep (default: a temporary one, removed at the end, pass or fail)')
    ap.add_argument('--params', default='paper-smoke',
                    help='profile to run (default paper-smoke, params/paper-smoke.yaml; paper-smoke-gpu: the same on a GPU)')
    a = ap.parse_args(argv)
    name = Path(a.params).stem if a.params.endswith('.yaml') else a.params
    if not (ROOT / 'params' / f'{name}.yaml').is_file():
        print(f"paper-smoke: --params {a.params}: no profile params/{name}.yaml; give one such as paper-smoke", file=sys.stderr)
        return 2
    from qualiclip.config import load_profile
    need = need_bytes(load_profile(ROOT / "params" / f"{name}.yaml"))
    scratch = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix='qualiclip-paper-smoke.'))
    repo = scratch / 'repo'
    if repo.exists():   # never delete a folder this run did not create
        print(f"paper-smoke: {repo} already exists; give --keep a new folder (or remove it yourself)", file=sys.stderr)
        return 2
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        if (why := room_error(scratch, need)): print(why, file=sys.stderr); return 2
        return run(repo, name, a.keep)
    finally:
        if not a.keep: shutil.rmtree(scratch, ignore_errors=True)


def run(repo: Path, name: str, keep: str | None) -> int:
    "Copy the working tree to `repo` and run the profile `name` there; 0 when every step passed."
    kept = f"scratch copy kept in {repo}" if keep else "run with --keep DIR to keep the scratch copy"
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(src, repo / f)
    env = dict(os.environ, DVC_NO_ANALYTICS='1', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', QUALICLIP_ROOT=str(repo),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", GIT_AUTHOR_NAME='smoke', GIT_AUTHOR_EMAIL='smoke@localhost',
               GIT_COMMITTER_NAME='smoke', GIT_COMMITTER_EMAIL='smoke@localhost', MPLBACKEND='Agg')
    (repo / 'params.yaml').unlink()                      # the committed params.yaml (the demo) is replaced by the profile's
    (repo / 'dvc.lock').unlink(missing_ok=True)          # the committed lock belongs to the demo profile
    trace = repo.parent / 'trace'
    for c in (['git', 'init', '-q'], ['git', 'add', '-A'], ['git', 'commit', '-qm', 'paper-smoke scratch copy']):
        subprocess.run(c, cwd=repo, env=env, check=True)
    q = str(BIN / 'qualiclip'); dvc = str(BIN / 'dvc')
    steps = [('profile', [q, 'profile', name]), ('standin', [q, 'standin']), ('check', [q, 'check']),
             ('dvc repro', [dvc, 'repro']), ('dvc repro (again)', [dvc, 'repro'])]
    times, stages, t_all = [], [], time.time()
    for name, cmd in steps:
        print(f"\n=== {name}: {' '.join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))}", flush=True)
        t0 = time.time(); rc, out, lines = sh(cmd, repo, dict(env, QUALICLIP_TRACE=str(trace)) if name == 'dvc repro' else env)
        dt = time.time() - t0
        times.append((name, dt))
        if rc != 0: print(f"paper-smoke: {name} failed (exit {rc}); {kept}", file=sys.stderr); return 1
        if name == 'dvc repro':
            stages = stage_times(lines, dt)
            if check_deps(repo, trace): return 1
        if name == 'dvc repro (again)':
            ran = [l.split("'")[1] for _, l in lines if l.startswith("Running stage '")]
            listed = [st for st in ran if st.split('@')[0] in ALWAYS_RUN]   # listing stages run every time, by design
            again = [st for st in ran if st not in listed]
            if again:
                print(f"paper-smoke: the second dvc repro re-ran {again}; it must re-run nothing but the listing stages "
                      f"{sorted(ALWAYS_RUN)} ({kept})", file=sys.stderr); return 1
    total = time.time() - t_all
    print("\n=== paper-smoke timing (seconds)")
    for name, dt in times: print(f"  {name:<32} {dt:8.1f}")
    print(f"  {'total':<32} {total:8.1f}")
    print("=== dvc repro, per stage (seconds, from its output)")
    for name, dt in stages: print(f"  {name:<32} {dt:8.1f}")
    if keep: print(kept)
    print(f"paper-smoke: passed in {total:.0f} s ({len(stages)} stages; the second dvc repro re-ran nothing"
          + (f" but {', '.join(listed)}, which list the training pool on every run and changed nothing downstream)" if listed else ")"))
    return 0


if __name__ == '__main__':
    sys.exit(main())
