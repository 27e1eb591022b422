#!/usr/bin/env python3
"""Measure every GPU performance goal of QualiCLIP in one run (`make bench-gpu`): JSON lines, then a summary table.

    python tools/bench_gpu.py [--quick] [--device auto|cpu|cuda|cuda:N] [--out FILE.jsonl] [--budget SECONDS]
                              [--sections parity,decode,score,pairs,train] [--parity-weights FILE|none]

Each figure is printed as one JSON line as soon as it is measured,
    {"figure": ..., "value": ..., "unit": ..., "goal": ..., "met": ..., "section": ..., ...settings...}
(`goal` and `met` are null for figures without a goal), after one "environment" line (torch, CUDA, GPU, versions).
The last lines are a table of every figure next to reference figures measured on one H200. With --out, the same JSON
lines are written to FILE (rewritten atomically after each section, so a run stopped half-way leaves what it measured).

What it measures, with the library's own code paths (random weights: speed does not depend on them):
  parity  scores of bf16 and fp16 on the GPU against fp32 on the CPU (max |difference|, SRCC), on the demo photos and
          distorted versions of them, for RN50 with random weights and for a trained checkpoint (--parity-weights)
  decode  JPEG decoding: PIL per CPU thread, PIL on all CPU threads, torchvision.io.decode_jpeg on the GPU (nvjpeg, 64 per call)
  score   `qualiclip score`'s code path (qualiclip.scoring.score_files) on synthetic 1024x768 JPEGs, bf16, next to the
          model alone on batches already on the GPU (same batch, same run); the model at 224x224; the authors' style
          (PIL decode, one image at a time, fp16)
  pairs   the degradation engine (qualiclip.pairs.bench_pairs_cmd, as `qualiclip bench pairs`): crop 224, L=5, 2 crops,
          up to 4 distortions per composition
  train   qualiclip.train.Trainer steps: model only (a fixed batch; eager, then torch.compile), end to end (pairs made on
          the fly from synthetic 512x384 pristine JPEGs); one pass over 140k pristine images (1.4M crops at L=5)
          extrapolated from the measured end-to-end slice
The whole run keeps within --budget seconds (default 480): each section has a time limit, and a section that does not
fit in what is left is reported as skipped. A section that fails prints one line per figure with "error" and the run
goes on. Exit code: 0 when every section ran (figures that need CUDA are "skipped": "no CUDA" on a CPU), 1 otherwise,
2 for a usage error (e.g. --device cuda without CUDA).

--quick: tiny sizes, the tiny open_clip config (qualiclip.model.TINY_CONFIG), a few iterations, torch.compile with
the 'eager' backend on a CPU (graph capture without code generation); about a minute on a 2-core CPU. It runs every
code path except those that need CUDA, which are run once on the CPU as a dry run and reported as skipped.

On a GPU machine without the project's virtual environment (torch and torchvision installed, the other dependencies
as wheels in .whl/): `bash tools/device_run.sh`, which installs .whl/*.whl into /tmp/site and runs this script with
PYTHONPATH=/tmp/site:<repo>. Copy the repository there with .whl/ and runs/demo/qualiclip.pth (the trained
checkpoint of the parity section), allow 10 minutes, and collect bench.jsonl and bench.log from $OUT; the last lines
of the output are the summary table.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('DVC_NO_ANALYTICS', '1')

import numpy as np
import torch

from qualiclip.core import rate, sync_device

SECTIONS = ('parity', 'decode', 'score', 'pairs', 'train')

# name: (section, unit, goal as (op, value) or None, reference on one H200 (context only), needs CUDA)
FIGURES = {
    'parity_rn50_random_bf16_max_abs_diff': ('parity', 'score', ('<=', 1e-2), None, True),
    'parity_rn50_random_bf16_srcc': ('parity', 'SRCC', ('>=', 0.999), None, True),
    'parity_rn50_random_fp16_max_abs_diff': ('parity', 'score', ('<=', 1e-2), None, True),
    'parity_rn50_random_fp16_srcc': ('parity', 'SRCC', ('>=', 0.999), None, True),
    'parity_trained_bf16_max_abs_diff': ('parity', 'score', ('<=', 1e-2), None, True),
    'parity_trained_bf16_srcc': ('parity', 'SRCC', ('>=', 0.999), None, True),
    'parity_trained_fp16_max_abs_diff': ('parity', 'score', ('<=', 1e-2), None, True),
    'parity_trained_fp16_srcc': ('parity', 'SRCC', ('>=', 0.999), None, True),
    'jpeg_decode_pil_per_thread': ('decode', 'images/s', None, '302', False),
    'jpeg_decode_pil_all_threads': ('decode', 'images/s', None, None, False),
    'jpeg_decode_nvjpeg_batch64': ('decode', 'images/s', None, '12,948', True),
    'score_model_only': ('score', 'images/s', None, '766 (trunk); 738 (batch 32, bf16, channels_last)', False),
    'score_model_only_224': ('score', 'images/s', None, '11,177', False),
    'score_end_to_end': ('score', 'images/s', ('>=', 700), None, False),
    'score_e2e_over_model': ('score', 'ratio', ('>=', 0.90), None, False),
    'score_authors_style': ('score', 'images/s', None, '61.5 (fp16); batched 32: 704 fp16', False),
    'pairs_crops_per_s': ('pairs', 'crops/s', ('>=', 5600), '597 (CPU pipeline, 16 workers)', False),
    'train_model_only_eager': ('train', 'crops/s', None, '2,995 / 3,190 / 3,292 (batch 160 / 320 / 640)', False),
    'train_compile_warmup_s': ('train', 's', None, None, False),
    'train_model_only_compiled': ('train', 'crops/s', None, '5,638 (batch 320)', False),
    'train_end_to_end': ('train', 'crops/s', None, None, False),
    'train_e2e_over_model': ('train', 'ratio', ('>=', 0.90), None, False),
    'pass_minutes_140k': ('train', 'min', ('<=', 5.0), None, False),
}


def settings(quick:bool, cpus:int) -> dict:
    "Sizes, batch sizes, workers and time limits (seconds) of each section."
    w = max(1, min(12, cpus - 2))
    if quick:
        return dict(backbone='qualiclip-tiny', width=160, height=120, n_files=16, score_batch=4, score_workers=1,
                    batch224=8, nvjpeg_batch=8, pristine_wh=(128, 96), n_pristine=12, crop=64, levels=5,
                    max_distortions=4, pair_batch=2, pair_workers=1, train_batch=2, train_workers=1, warmup=1,
                    parity_short=64, parity_distorted=False,
                    t=dict(decode=1.0, model=1.0, e2e=2.0, authors=1.0, pairs=2.0, eager=1.0, compiled=1.0, slice=2.0),
                    max_slice_steps=3, min_section=dict(parity=5, decode=3, score=5, pairs=3, train=10))
    return dict(backbone='RN50-quickgelu', width=1024, height=768, n_files=128, score_batch=32, score_workers=w,
                batch224=256, nvjpeg_batch=64, pristine_wh=(512, 384), n_pristine=256, crop=224, levels=5,
                max_distortions=4, pair_batch=32, pair_workers=min(8, w), train_batch=32, train_workers=min(8, w),
                warmup=5, parity_short=224, parity_distorted=True,
                t=dict(decode=5.0, model=8.0, e2e=10.0, authors=8.0, pairs=15.0, eager=8.0, compiled=10.0, slice=120.0),
                max_slice_steps=3000, min_section=dict(parity=20, decode=15, score=40, pairs=25, train=120))


class Run:
    "Collects the JSON lines, prints them, rewrites --out atomically."
    def __init__(self, out:str|None, budget:float):
        self.out, self.lines, self.t0, self.budget, self.failed = out, [], time.perf_counter(), budget, []

    def left(self) -> float: return self.budget - (time.perf_counter() - self.t0)

    def emit(self, rec:dict):
        rec = {k: _plain(v) for k, v in rec.items()}
        self.lines.append(rec)
        print(json.dumps(rec, allow_nan=False), flush=True)

    def figure(self, name:str, value, **extra):
        "Emit a measured figure, with its unit, goal and whether the goal is met."
        section, unit, goal, ref, _ = FIGURES[name]
        v = None if value is None or not math.isfinite(float(value)) else float(value)
        met = None if goal is None or v is None else (v >= goal[1] if goal[0] == '>=' else v <= goal[1])
        if 'met' in extra: met = extra.pop('met') if v is not None else None   # a goal with more than one condition
        rec = {'figure': name, 'value': v, 'unit': unit, 'goal': _goal_text(name), 'met': met, 'section': section}
        if v is None and value is not None: rec['error'] = f'non-finite value {value}'
        rec.update(extra); self.emit(rec)

    def skip(self, name:str, why:str, **extra):
        section, unit, _, _, _ = FIGURES[name]
        self.emit({'figure': name, 'value': None, 'unit': unit, 'goal': _goal_text(name), 'met': None, 'section': section,
                   'skipped': why, **extra})

    def fail(self, section:str, err:str):
        "One line with the error for each figure of the section not emitted yet."
        self.failed.append(section)
        self.fail_figures([n for n, spec in FIGURES.items() if spec[0] == section], err)

    def fail_figures(self, names:list, err:str):
        "One line with the error for each of these figures not emitted yet."
        got = {r['figure'] for r in self.lines}
        for name in names:
            if name not in got:
                spec = FIGURES[name]
                self.emit({'figure': name, 'value': None, 'unit': spec[1], 'goal': _goal_text(name), 'met': None,
                           'section': spec[0], 'error': err})

    def save(self):
        if not self.out: return
        p = Path(self.out); p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{p.name}.', suffix='.tmp', dir=p.parent)
        try:
            with os.fdopen(fd, 'w') as f: f.write(''.join(json.dumps(r, allow_nan=False) + '\n' for r in self.lines))
            os.chmod(tmp, 0o644); os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(FileNotFoundError): os.unlink(tmp)
            raise


def _plain(v):
    "JSON-safe values: numpy and torch scalars as Python numbers, non-finite floats as None, paths as text."
    if isinstance(v, dict): return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)): return [_plain(x) for x in v]
    if isinstance(v, (np.generic, torch.Tensor)): v = v.item()
    if isinstance(v, float): return v if math.isfinite(v) else None
    if isinstance(v, Path): return str(v)
    return v


def _goal_text(name:str) -> str|None:
    goal = FIGURES[name][2]
    if goal is None: return None
    if name == 'score_end_to_end': return '>= 700 and >= 0.90 x score_model_only'
    return f'{goal[0]} {goal[1]:g}'


def jpeg_folder(out:Path, n:int, width:int, height:int, threads:int=8) -> list[Path]:
    "`n` synthetic photo-like JPEGs (qualiclip.scoring.synthetic_jpegs), written by several threads."
    from qualiclip.scoring import synthetic_jpegs
    k = max(1, min(threads, n)); per = [n // k + (i < n % k) for i in range(k)]
    with ThreadPoolExecutor(k) as ex:
        parts = ex.map(lambda i: synthetic_jpegs(out / f'part{i}', per[i], width, height, seed=i), range(k))
    return [p for part in parts for p in part]


# ---------------------------------------------------------------------------------------------------- environment
def environment(args, dev:torch.device, cfg:dict) -> dict:
    "Facts of the machine and the software (one JSON line)."
    from importlib import metadata
    def ver(d):
        try: return metadata.version(d)
        except metadata.PackageNotFoundError: return None
    env = {'figure': 'environment', 'python': platform.python_version(), 'platform': platform.platform(),
           'cpus': os.cpu_count(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           'device': str(dev), 'quick': args.quick, 'budget_s': args.budget, 'backbone': cfg['backbone'],
           'packages': {d: ver(d) for d in ('torchvision', 'open_clip_torch', 'kornia', 'kornia_rs', 'ftfy', 'fastcore',
                                            'numpy', 'pillow', 'scipy', 'pandas', 'timm', 'huggingface_hub')}}
    if dev.type == 'cuda':
        p = torch.cuda.get_device_properties(dev)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f'{p.major}.{p.minor}',
                   multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
        try:
            q = subprocess.run(['nvidia-smi', '--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit',
                                '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
            env['nvidia_smi'] = q.stdout.strip() or None
        except (OSError, subprocess.SubprocessError): env['nvidia_smi'] = None
    else: env['gpu'] = None
    try:
        env['git_commit'] = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError): env['git_commit'] = None
    return env


# ---------------------------------------------------------------------------------------------------- parity
def parity_images(short:int, distorted:bool=True) -> list[torch.Tensor]:
    "The demo photos resized to `short` px on the shorter side, each also blurred, noised and JPEG-compressed at levels 1, 3, 5."
    from qualiclip.core import DEMO_PHOTOS, demo_photo
    from qualiclip.model import prep_image
    from qualiclip.distortions import distort
    g = torch.Generator().manual_seed(0); out = []
    for n in DEMO_PHOTOS:
        im = prep_image(torch.from_numpy(demo_photo(n)).permute(2, 0, 1), short)
        out.append(im)
        if distorted:
            for t in ('gaublur', 'whitenoise', 'jpeg'):
                for lv in (1, 3, 5): out.append(distort(im, t, lv, g).reshape(im.shape))
    return out


def scores_one_by_one(model, images:list, dev:torch.device, amp:str) -> np.ndarray:
    "Scores of images of different sizes, one forward pass each (`score_batch`, the scoring code path) with `model.amp`."
    model.amp = amp
    return np.array([float(model.score_batch(im[None].to(dev))[0]) for im in images])


def parity_pair(cpu_model, images:list, dev:torch.device) -> dict:
    "{amp: (max |gpu - cpu|, SRCC)} for bf16 and fp16 on `dev` against fp32 on the CPU."
    from qualiclip.metrics import srcc
    ref = scores_one_by_one(cpu_model, images, torch.device('cpu'), 'fp32')
    gpu = copy.deepcopy(cpu_model).to(dev)
    res = {}
    for amp in ('bf16', 'fp16'):
        s = scores_one_by_one(gpu, images, dev, amp)
        res[amp] = (float(np.abs(s - ref).max()), srcc(s, ref))
    res['ref_std'] = float(ref.std()); res['n'] = len(images)
    del gpu
    return res


def sec_parity(run:Run, dev:torch.device, cfg:dict, args):
    from qualiclip.model import QualiCLIP
    images = parity_images(cfg['parity_short'], cfg['parity_distorted'])
    models = {'rn50_random': None, 'trained': None}
    torch.manual_seed(0)
    models['rn50_random'] = (QualiCLIP(cfg['backbone'], pretrained=None).eval(), f"{cfg['backbone']} random weights (seed 0)")
    w = args.parity_weights
    if w and w.lower() != 'none' and Path(w).is_file():
        models['trained'] = (QualiCLIP.from_checkpoint(w).eval(), f'checkpoint {w}')
    for key, mb in models.items():
        names = [f'parity_{key}_{amp}_{m}' for amp in ('bf16', 'fp16') for m in ('max_abs_diff', 'srcc')]
        if mb is None:
            for n in names: run.skip(n, f'no trained checkpoint (--parity-weights {w}: not a file)')
            continue
        model, what = mb
        extra = dict(model=what, images=len(images), short_side=cfg['parity_short'],
                     note='demo photos + gaublur/whitenoise/jpeg at levels 1,3,5; one image per forward pass; '
                          'reference fp32 on the CPU')
        if dev.type != 'cuda':   # dry run of the same code on the CPU (autocast applies on CUDA only)
            r = parity_pair(model, images[:3], dev)
            for n in names: run.skip(n, 'no CUDA', dry_run=f"code path run on the CPU: {r['bf16']}")
            continue
        r = parity_pair(model, images, dev)
        for amp in ('bf16', 'fp16'):
            run.figure(f'parity_{key}_{amp}_max_abs_diff', r[amp][0], ref_score_std=r['ref_std'], **extra)
            run.figure(f'parity_{key}_{amp}_srcc', r[amp][1], ref_score_std=r['ref_std'], **extra)


# ---------------------------------------------------------------------------------------------------- decode
def nvjpeg_decode(datas:list, dev:torch.device) -> list:
    "Decode a list of JPEG byte tensors in one call (nvjpeg, batched, on CUDA)."
    from torchvision.io import decode_jpeg, ImageReadMode
    return decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev)


def pil_decode(path) -> np.ndarray:
    "Decode as `qualiclip score` does (qualiclip.core.load_pil): uint8 (H,W,3)."
    from qualiclip.core import load_pil
    return np.asarray(load_pil(path), dtype=np.uint8)


def sec_decode(run:Run, dev:torch.device, cfg:dict, files:list):
    t = cfg['t']['decode']; cpu = torch.device('cpu'); W, H = cfg['width'], cfg['height']
    it = iter(range(10**12))
    r, _, _ = rate(lambda: pil_decode(files[next(it) % len(files)]), 1, t, cpu)
    run.figure('jpeg_decode_pil_per_thread', r, size=f'{W}x{H}', decoder='PIL (qualiclip.core.load_pil)', threads=1)
    k = os.cpu_count() or 1
    with ThreadPoolExecutor(k) as ex:
        r, _, _ = rate(lambda: list(ex.map(pil_decode, files)), len(files), t, cpu)
    run.figure('jpeg_decode_pil_all_threads', r, size=f'{W}x{H}', decoder='PIL (qualiclip.core.load_pil)', threads=k)
    from torchvision.io import read_file
    B = cfg['nvjpeg_batch']
    datas = [read_file(str(files[i % len(files)])) for i in range(B)]
    if dev.type != 'cuda':
        out = nvjpeg_decode(datas[:2], cpu)   # dry run of the call on the CPU
        run.skip('jpeg_decode_nvjpeg_batch64', 'no CUDA', dry_run=f'decode_jpeg on the CPU gave {tuple(out[0].shape)}')
        return
    nvjpeg_decode(datas, dev); sync_device(dev)   # warm-up (decoder handles)
    r, calls, _ = rate(lambda: nvjpeg_decode(datas, dev), B, t, dev)
    run.figure('jpeg_decode_nvjpeg_batch64', r, size=f'{W}x{H}', batch=B, calls=calls,
               decoder='torchvision.io.decode_jpeg(list, device=cuda)', note='file bytes already in memory')


# ---------------------------------------------------------------------------------------------------- score
def score_files_kwargs(batch:int, workers:int) -> dict:
    "Arguments of score_files for a fixed batch: no pixel budget (0)."
    return dict(batch_size=batch, workers=workers, progress=False, batch_pixels=0)


def sec_score(run:Run, dev:torch.device, cfg:dict, files:list):
    from qualiclip.model import QualiCLIP
    from qualiclip.scoring import score_files
    tt, B, W, H = cfg['t'], cfg['score_batch'], cfg['width'], cfg['height']
    amp = 'bf16' if dev.type == 'cuda' else 'fp32'
    torch.manual_seed(0)
    authors = QualiCLIP(cfg['backbone'], pretrained=None).to(dev).eval()   # built before any channels_last conversion
    torch.manual_seed(0)
    model = QualiCLIP(cfg['backbone'], pretrained=None).to(dev).eval(); model.name = 'qualiclip-random-init'; model.amp = amp
    common = dict(backbone=cfg['backbone'], weights='random', precision=amp, device=str(dev))
    # model only: decoded images already on the device, the batches `score_files` would form
    imgs = [torch.from_numpy(pil_decode(f)) for f in files]
    batches = [torch.stack(imgs[i:i + B]).to(dev).permute(0, 3, 1, 2) for i in range(0, len(imgs) - B + 1, B)]
    model.score_batch(batches[0]); sync_device(dev)   # warm-up
    it = iter(range(10**12))
    mo, _, _ = rate(lambda: model.score_batch(batches[next(it) % len(batches)]), B, tt['model'], dev, min_calls=2)
    run.figure('score_model_only', mo, size=f'{W}x{H}', batch=B, channels_last=True, **common,
               note='QualiCLIP.score_batch on uint8 batches already on the device')
    b224 = torch.randint(0, 256, (cfg['batch224'], 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(dev)
    model.score_batch(b224); sync_device(dev)
    r224, _, _ = rate(lambda: model.score_batch(b224), len(b224), tt['model'] / 2, dev, min_calls=2)
    run.figure('score_model_only_224', r224, size='224x224', batch=len(b224), channels_last=True, **common)
    # end to end: the `qualiclip score` code path; a first call sizes the timed one to about tt['e2e'] seconds
    kw = score_files_kwargs(B, cfg['score_workers'])
    n0 = max(4 * B, len(files)); got = {}
    def run_files(paths): got['df'] = score_files(paths, model, **kw)
    first = [files[i % len(files)] for i in range(n0)]
    est, _, _ = rate(lambda: run_files(first), n0, None, dev)
    n = int(min(max(n0, est * tt['e2e']), 50_000)) // B * B or B
    paths = [files[i % len(files)] for i in range(n)]
    e2e, _, el = rate(lambda: run_files(paths), n, None, dev); df = got['df']
    bad = int(df.score.isna().sum())
    if bad: raise RuntimeError(f'score_files failed on {bad} of {n} files: {df.error[df.score.isna()].iloc[0]}')
    ratio = e2e / mo
    run.figure('score_end_to_end', e2e, met=bool(e2e >= 700 and ratio >= 0.90), size=f'{W}x{H}', batch=B,
               workers=cfg['score_workers'], images=n, unique_files=len(files), seconds=round(el, 2), **common,
               code_path='qualiclip.scoring.score_files (qualiclip score)', options={k: v for k, v in kw.items()})
    run.figure('score_e2e_over_model', ratio, end_to_end=e2e, model_only=mo)
    # the authors' style: PIL decode, ToTensor, one image per forward pass, fp16 autocast, score read back per image
    am_dt = torch.float16 if dev.type == 'cuda' else None
    def one(path):
        x = torch.from_numpy(pil_decode(path)).permute(2, 0, 1).float().div(255)[None].to(dev)
        with torch.no_grad(), torch.autocast('cuda', dtype=am_dt or torch.float32, enabled=am_dt is not None):
            return float(authors.logits_to_score(authors.similarities(x))[0])
    one(files[0])
    it = iter(range(10**12))
    ra, calls, _ = rate(lambda: one(files[next(it) % len(files)]), 1, tt['authors'], dev, min_calls=2)
    run.figure('score_authors_style', ra, size=f'{W}x{H}', batch=1, images=calls, backbone=cfg['backbone'], weights='random',
               precision='fp16' if am_dt else 'fp32', channels_last=False, device=str(dev))


# ---------------------------------------------------------------------------------------------------- pairs
def sec_pairs(run:Run, dev:torch.device, cfg:dict, pristine:str):
    from qualiclip.pairs import bench_pairs_cmd
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench_pairs_cmd(device=str(dev), crop=cfg['crop'], levels=cfg['levels'], workers=cfg['pair_workers'],
                        seconds=cfg['t']['pairs'], batch_size=cfg['pair_batch'], pristine=str(pristine), seed=0,
                        max_distortions=cfg['max_distortions'])
    res = json.loads(buf.getvalue().strip().splitlines()[-1])
    run.figure('pairs_crops_per_s', res['crops_per_s'], crop=cfg['crop'], levels=cfg['levels'], crops_per_sample=2,
               max_distortions=cfg['max_distortions'], batch_images=cfg['pair_batch'], workers=cfg['pair_workers'],
               pristine=f"{cfg['n_pristine']} synthetic {cfg['pristine_wh'][0]}x{cfg['pristine_wh'][1]} JPEGs",
               device=str(dev), code_path='qualiclip.pairs.bench_pairs_cmd (qualiclip bench pairs)',
               seconds=res.get('seconds'), degrade_share=res.get('degrade_share'),
               slowest_types=dict(list((res.get('type_time_share') or {}).items())[:5]))


# ---------------------------------------------------------------------------------------------------- train
def _trainer(cfg:dict, dev:torch.device, pristine:str, compile:bool, out:str):
    from qualiclip.train import Trainer, TrainConfig
    tc = TrainConfig(backbone=cfg['backbone'], pretrained=None, crop=cfg['crop'], levels=cfg['levels'],
                     max_distortions=cfg['max_distortions'], batch_size=cfg['train_batch'], workers=cfg['train_workers'],
                     steps=10**9, warmup_steps=0, lr=1e-6, device=str(dev), precision='auto', channels_last=True,
                     compile=compile, pristine=str(pristine), out=out, progress=False, seed=0)
    return Trainer(tc)


def sec_train(run:Run, dev:torch.device, cfg:dict, pristine:str, quick_compile_backend:str|None):
    import itertools
    from qualiclip.train import time_steps
    tt = cfg['t']; crops = cfg['train_batch'] * 2 * cfg['levels']
    common = dict(backbone=cfg['backbone'], weights='random', crop=cfg['crop'], levels=cfg['levels'], batch_crops=crops,
                  precision='bf16' if dev.type == 'cuda' else 'fp32', channels_last=True, device=str(dev),
                  code_path='qualiclip.train.Trainer.step')
    with tempfile.TemporaryDirectory() as d:
        tr = _trainer(cfg, dev, pristine, False, d + '/eager')
        data = tr.batches(); fixed = next(data)
        for _ in range(cfg['warmup']): tr.step(fixed)
        mo, n, _ = time_steps(tr, itertools.repeat(fixed), tt['eager'], 10**9)
        run.figure('train_model_only_eager', mo, steps=n, compile=False, **common)
        backend, compile_error = None, None
        try:   # the compiled trainer; if compiling fails, the end-to-end slice runs on the eager one
            ctr = _trainer(cfg, dev, pristine, True, d + '/compiled')
            cdata = ctr.batches(); cfixed = next(cdata)
            _, _, warm_s = time_steps(ctr, itertools.repeat(cfixed), None, cfg['warmup'])
            name = quick_compile_backend or 'inductor'
            run.figure('train_compile_warmup_s', warm_s, steps=cfg['warmup'], compile_backend=name,
                       note='first steps of the compiled trainer, compilation included')
            cmo, n, _ = time_steps(ctr, itertools.repeat(cfixed), tt['compiled'], 10**9)
            run.figure('train_model_only_compiled', cmo, steps=n, compile=True, compile_backend=name, **common)
            tr, data, fixed, mo, backend = ctr, cdata, cfixed, cmo, name
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            compile_error = f'{type(e).__name__}: {str(e)[:400]}'
            run.fail_figures(['train_compile_warmup_s', 'train_model_only_compiled'], compile_error)
            run.failed.append('train (torch.compile)')
        if dev.type == 'cuda': torch.cuda.empty_cache()
        for _ in range(cfg['warmup']): tr.step(next(data))   # loader workers started, prefetch filled
        slice_s = max(1.0, min(tt['slice'], run.left() - 20))
        e2e, n, el = time_steps(tr, data, slice_s, cfg['max_slice_steps'])
        pe = dict(pristine=f"{cfg['n_pristine']} synthetic {cfg['pristine_wh'][0]}x{cfg['pristine_wh'][1]} JPEGs",
                  workers=cfg['train_workers'], max_distortions=cfg['max_distortions'])
        how = dict(compile=backend is not None, compile_backend=backend, **({'compile_error': compile_error} if compile_error else {}))
        run.figure('train_end_to_end', e2e, steps=n, seconds=round(el, 2), **how, **pe, **common,
                   note='pairs made on the fly (Trainer.batches: decode, resize, crop, degrade on the device)')
        run.figure('train_e2e_over_model', e2e / mo, end_to_end=e2e, model_only=mo,
                   against='train_model_only_compiled' if backend else 'train_model_only_eager (compiling failed)')
        total_crops = 140_000 * 2 * cfg['levels']
        run.figure('pass_minutes_140k', total_crops / e2e / 60, extrapolated=True, measured_steps=n,
                   measured_crops=n * crops, measured_seconds=round(el, 2), pass_crops=total_crops, **how,
                   note=f'extrapolated from a measured slice of {n} end-to-end steps ({n * crops} crops, {el:.0f} s) '
                        f'to 140,000 pristine images x 2 crops x {cfg["levels"]} levels; validation and checkpoints not included')


# ---------------------------------------------------------------------------------------------------- summary
def summary(run:Run) -> str:
    "A fixed-width table of every figure: value, unit, goal, met, reference on one H200."
    rows = [('figure', 'value', 'unit', 'goal', 'met', 'H200 reference')]
    for r in run.lines:
        if r.get('figure') not in FIGURES: continue
        v = r.get('value')
        if v is None: val = 'skipped' if r.get('skipped') else 'ERROR' if r.get('error') else '-'
        else: val = f'{v:,.4g}' if abs(v) < 10 else f'{v:,.1f}'
        met = {True: 'yes', False: 'NO', None: ''}[r.get('met')]
        ref = FIGURES[r['figure']][3] or ''
        rows.append((r['figure'] + (' *' if r.get('extrapolated') else ''), val, r.get('unit') or '', r.get('goal') or '', met, ref))
    w = [max(len(str(x[i])) for x in rows) for i in range(5)]
    out = ['  '.join(str(x[i]).ljust(w[i]) if i != 1 else str(x[i]).rjust(w[i]) for i in range(5)) + '  ' + x[5] for x in rows]
    out.insert(1, '-' * (sum(w) + 10 + 16))
    notes = [f"  {r['figure']}: {r.get('skipped') or r.get('error')}" for r in run.lines
             if r.get('figure') in FIGURES and r.get('value') is None]
    env = next((r for r in run.lines if r.get('figure') == 'environment'), {})
    head = (f"bench-gpu summary: {env.get('gpu') or 'no GPU'} | torch {env.get('torch')} | CUDA {env.get('cuda')} | "
            f"{env.get('backbone')} random weights | {'QUICK (tiny sizes, not performance figures)' if env.get('quick') else 'full'}")
    tail = (['* extrapolated from a measured slice (see its JSON line)'] if any(r.get('extrapolated') for r in run.lines) else []) + \
           ['H200 references: figures measured earlier on one H200, for context only (not goals).']
    return '\n'.join([head, *out, *tail] + (['not measured:', *notes] if notes else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='tiny sizes and iterations (a CPU check of every code path)')
    ap.add_argument('--device', default='auto', help='auto (CUDA when available), cpu, cuda or cuda:N')
    ap.add_argument('--out', help='write the JSON lines to this file (atomically)')
    ap.add_argument('--budget', type=float, default=None, help='seconds for the whole run (default 480; 300 with --quick)')
    ap.add_argument('--sections', default=','.join(SECTIONS), help=f'comma-separated subset of {",".join(SECTIONS)}')
    ap.add_argument('--parity-weights', default=str(ROOT / 'runs' / 'demo' / 'qualiclip.pth'),
                    help="trained checkpoint (official layout) for the second parity check, or 'none'")
    a = ap.parse_args(argv)
    a.budget = a.budget or (300.0 if a.quick else 480.0)
    secs = [s.strip() for s in a.sections.split(',') if s.strip()]
    if set(secs) - set(SECTIONS): ap.error(f"--sections: unknown {sorted(set(secs) - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    try:
        from qualiclip.core import get_device
        dev = get_device(a.device)
    except (RuntimeError, ValueError) as e:
        print(f'bench_gpu: {e}', file=sys.stderr); return 2
    if dev.type != 'cuda' and not a.quick and a.device == 'auto':
        print('bench_gpu: no CUDA device here: the full benchmark needs a GPU (minutes there, hours on a CPU); '
              'add --quick for a check of every code path on the CPU, or --device cpu to measure the CPU anyway.', file=sys.stderr)
        return 2
    cfg = settings(a.quick, os.cpu_count() or 1)
    run = Run(a.out, a.budget)
    try: run.emit(environment(a, dev, cfg))
    except Exception as e: run.emit({'figure': 'environment', 'device': str(dev), 'error': f'{type(e).__name__}: {e}'})
    run.save()
    compile_backend, real_compile = None, torch.compile
    if dev.type != 'cuda' and a.quick:   # graph capture without C++ code generation: the Trainer's compile branch in seconds
        compile_backend = 'eager'; torch.compile = functools.partial(real_compile, backend='eager')
    try: return _sections(a, run, dev, cfg, secs, compile_backend)
    finally: torch.compile = real_compile


def _sections(a, run:Run, dev:torch.device, cfg:dict, secs:list, compile_backend:str|None) -> int:
    "Run the chosen sections in order, then print the summary; the exit code."
    with tempfile.TemporaryDirectory(prefix='qualiclip-bench-') as tmp:
        files = pristine = None
        def need_files():
            nonlocal files
            if files is None: files = jpeg_folder(Path(tmp) / 'score', cfg['n_files'], cfg['width'], cfg['height'])
            return files
        def need_pristine():
            nonlocal pristine
            if pristine is None:
                jpeg_folder(Path(tmp) / 'pristine', cfg['n_pristine'], *cfg['pristine_wh']); pristine = Path(tmp) / 'pristine'
            return pristine
        jobs = {'parity': lambda: sec_parity(run, dev, cfg, a),
                'decode': lambda: sec_decode(run, dev, cfg, need_files()),
                'score': lambda: sec_score(run, dev, cfg, need_files()),
                'pairs': lambda: sec_pairs(run, dev, cfg, _flat(need_pristine())),
                'train': lambda: sec_train(run, dev, cfg, _flat(need_pristine()), compile_backend)}
        for s in SECTIONS:
            if s not in secs: continue
            if run.left() < cfg['min_section'][s]:
                for name, spec in FIGURES.items():
                    if spec[0] == s: run.skip(name, f'time budget: {run.left():.0f} s left of {a.budget:.0f} s')
                run.failed.append(s); run.save(); continue
            t0 = time.perf_counter()
            try: jobs[s]()
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                run.fail(s, f'{type(e).__name__}: {str(e)[:500]}')
            print(f'[bench_gpu] section {s}: {time.perf_counter() - t0:.1f} s ({run.left():.0f} s of the budget left)',
                  file=sys.stderr, flush=True)
            if dev.type == 'cuda': torch.cuda.empty_cache()
            run.save()
    total = time.perf_counter() - run.t0
    run.emit({'figure': 'run', 'seconds': round(total, 1), 'sections': secs, 'failed_sections': run.failed,
              'quick': a.quick}); run.save()
    print('\n' + summary(run), flush=True)
    print(f'bench_gpu: {total:.0f} s; ' + ('every section ran' if not run.failed else f'sections not completed: {run.failed}')
          + (f'; JSON lines in {a.out}' if a.out else ''), flush=True)
    return 0 if not run.failed else 1


def _flat(folder:Path) -> str:
    "A glob pattern of the JPEGs `jpeg_folder` wrote into `folder` (in sub-folders)."
    return str(folder / 'part*' / '*.jpg')


if __name__ == '__main__':
    sys.exit(main())
