"""Start-up time of the CLI's help against importing torch, in one run on this machine.

    python tools/bench_cli.py [--runs 5]

Times whole processes (median of --runs each, interleaved): `qualiclip --help`, `qualiclip score --help` and
`python -c "import torch"`; prints the CPU (model name, avx2/avx512f/amx flags) with the figures, a JSON line last."""
import argparse, json, os, shutil, statistics, subprocess, sys, time
from pathlib import Path

from qualiclip.core import cpu_info   # (this process's own imports are not timed)

def qualiclip_cmd() -> list[str]:
    "The `qualiclip` console script next to this Python, else `python -m qualiclip.cli`."
    exe = Path(sys.executable).parent / 'qualiclip'
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'qualiclip.cli']

def time_once(cmd:list[str]) -> float:
    "Seconds one process takes, start to exit (it must exit 0)."
    t = time.perf_counter(); r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0: sys.exit(f"bench_cli: {' '.join(cmd)} exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return dt

def main(runs:int=5) -> dict:
    q = qualiclip_cmd()
    cases = {'qualiclip --help': q + ['--help'], 'qualiclip score --help': q + ['score', '--help'],
             'python -c "import torch"': [sys.executable, '-c', 'import torch']}
    for c in cases.values(): time_once(c)                       # warm the file cache once
    times = {k: [] for k in cases}
    for _ in range(runs):                                       # interleaved, so load changes hit all alike
        for k, c in cases.items(): times[k].append(time_once(c))
    res = {**cpu_info(), 'runs': runs, 'qualiclip': ' '.join(q),
           'median_s': {k: round(statistics.median(v), 4) for k, v in times.items()}}
    print(f"CPU: {res['cpu']} ({res['cores']} logical cores); flags: {' '.join(res['flags']) or 'none of avx2/avx512f/amx'}")
    torch_s = res['median_s']['python -c "import torch"']
    for k, v in res['median_s'].items():
        print(f"  {k:<28} {v * 1000:8.1f} ms   ({v / torch_s:5.2f} x import torch)   [{', '.join(f'{t * 1000:.0f}' for t in times[k])}]")
    print(json.dumps(res))
    return res

if __name__ == '__main__':
    a = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    a.add_argument('--runs', type=int, default=5, help='processes timed per command (median reported)')
    main(a.parse_args().runs)
