"""tools/bench_gpu.py: the --quick run on the CPU reports every figure as valid JSON; failures and the time budget are
reported, not fatal. The `test_gpu_*` tests need CUDA (`make test-gpu`): nvjpeg decoding against PIL, bf16/fp16 scores
against fp32 on the CPU, one compiled training step."""
import importlib.util, json, math, os, subprocess, sys, time
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'tools' / 'bench_gpu.py'


def _load_bench():
    spec = importlib.util.spec_from_file_location('bench_gpu', SCRIPT)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m


bench = _load_bench()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (make test-gpu on a GPU machine)')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    "One --quick run on the CPU: (process, JSON lines of --out, seconds)."
    from qualiclip.model import random_official_checkpoint, TINY_CONFIG
    d = tmp_path_factory.mktemp('bench')
    ck = random_official_checkpoint(d / 'tiny.pth', TINY_CONFIG, seed=1)
    out = d / 'bench.jsonl'
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    t0 = time.time()
    p = subprocess.run([sys.executable, str(SCRIPT), '--quick', '--device', 'cpu', '--out', str(out),
                        '--parity-weights', str(ck)], cwd=d, env=env, capture_output=True, text=True, timeout=900)
    return p, out, time.time() - t0


def test_quick_run_reports_every_figure(quick):
    p, out, seconds = quick
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]   # every line is one valid JSON object
    printed = [json.loads(line) for line in p.stdout.splitlines() if line.startswith('{')]
    assert printed == recs   # the file holds exactly what was printed
    env = recs[0]
    assert env['figure'] == 'environment' and env['torch'] == torch.__version__ and env['device'] == 'cpu'
    assert env['quick'] is True and env['gpu'] is None and env['backbone'] == 'qualiclip-tiny'
    assert recs[-1]['figure'] == 'run' and recs[-1]['failed_sections'] == [] and recs[-1]['quick'] is True
    figs = {r['figure']: r for r in recs if r['figure'] in bench.FIGURES}
    assert list(figs) == list(bench.FIGURES)   # every figure once, in the documented order
    assert len([r for r in recs if r['figure'] in bench.FIGURES]) == len(bench.FIGURES)
    for name, r in figs.items():
        section, unit, goal, ref, cuda_only = bench.FIGURES[name]
        assert r['unit'] == unit and r['section'] == section and 'error' not in r, r
        if cuda_only:
            assert r['value'] is None and r['skipped'] == 'no CUDA' and r['met'] is None and r['dry_run'], r
        else:
            assert isinstance(r['value'], float) and math.isfinite(r['value']) and r['value'] > 0, r
        if goal is None: assert r['goal'] is None and r['met'] is None, r
        else:
            assert r['goal'].startswith(goal[0]), r
            assert r['met'] in (True, False) or cuda_only, r
    # derived figures agree with the figures they come from
    e2e, mo = figs['score_end_to_end']['value'], figs['score_model_only']['value']
    assert figs['score_e2e_over_model']['value'] == pytest.approx(e2e / mo, rel=1e-9)
    assert figs['score_end_to_end']['met'] == (e2e >= 700 and e2e / mo >= 0.9)
    t = figs['train_end_to_end']
    assert t['compile'] is True and t['compile_backend'] == 'eager' and t['steps'] >= 1
    assert figs['train_e2e_over_model']['value'] == pytest.approx(t['value'] / figs['train_model_only_compiled']['value'])
    pm = figs['pass_minutes_140k']
    assert pm['extrapolated'] is True and 'extrapolated from a measured slice' in pm['note']
    assert pm['value'] == pytest.approx(140_000 * 2 * 5 / t['value'] / 60) and pm['met'] == (pm['value'] <= 5)
    assert figs['score_end_to_end']['code_path'].startswith('qualiclip.scoring.score_files')
    assert figs['pairs_crops_per_s']['code_path'].startswith('qualiclip.pairs.bench_pairs_cmd')
    assert figs['pairs_crops_per_s']['levels'] == 5 and figs['pairs_crops_per_s']['max_distortions'] == 4
    # the summary table comes last and names every figure
    table = p.stdout[p.stdout.index('bench-gpu summary'):]
    for name in bench.FIGURES: assert name in table
    assert 'QUICK' in table and 'extrapolated' in table
    print(f'--quick run on this CPU: {seconds:.0f} s')


def test_failing_section_and_budget_are_reported(tmp_path, monkeypatch, capsys):
    def boom(*a, **k): raise RuntimeError('planted failure')
    monkeypatch.setattr(bench, 'sec_decode', boom)
    out = tmp_path / 'b.jsonl'
    rc = bench.main(['--quick', '--device', 'cpu', '--sections', 'decode', '--out', str(out)])
    assert rc == 1
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    dec = [r for r in recs if r.get('section') == 'decode']
    assert [r['figure'] for r in dec] == [n for n, s in bench.FIGURES.items() if s[0] == 'decode']
    assert all(r['value'] is None and r['error'] == 'RuntimeError: planted failure' for r in dec)
    assert recs[-1]['failed_sections'] == ['decode'] and 'ERROR' in capsys.readouterr().out
    assert torch.compile is bench.torch.compile and not hasattr(torch.compile, 'keywords')   # restored
    rc = bench.main(['--quick', '--device', 'cpu', '--budget', '1', '--out', str(out)])   # nothing fits in 1 s
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 1 and all(r['skipped'].startswith('time budget') for r in recs if r['figure'] in bench.FIGURES)
    assert len([r for r in recs if r['figure'] in bench.FIGURES]) == len(bench.FIGURES)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without CUDA')
def test_cuda_without_cuda_is_a_usage_error(capsys):
    assert bench.main(['--device', 'cuda']) == 2
    assert 'CUDA is not available' in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without CUDA')
def test_full_run_without_cuda_says_to_use_quick(capsys):
    assert bench.main([]) == 2 and '--quick' in capsys.readouterr().err


def test_paper_smoke_gpu_profile_is_the_smoke_profile_on_cuda():
    "The GPU smoke profile is an overlay: resolved, it is the smoke profile with exactly these keys changed."
    from qualiclip.config import load_profile
    from qualiclip.pipeline import train_config
    cpu, gpu = load_profile('paper-smoke'), load_profile('paper-smoke-gpu')
    def flat(d, pre=''):
        return {k2: v2 for k, v in d.items() for k2, v2 in (flat(v, f'{pre}{k}.').items() if isinstance(v, dict) else [(f'{pre}{k}', v)])}
    a, b = flat(cpu), flat(gpu)
    drift = {k: (a.get(k, '<absent>'), b.get(k, '<absent>')) for k in sorted(a.keys() | b.keys()) if a.get(k, '<absent>') != b.get(k, '<absent>')}
    assert drift == {'device': ('cpu', 'cuda'), 'evaluate.precision': ('auto', 'bf16'), 'profile': ('paper-smoke', 'paper-smoke-gpu'),
                     'train.compile': (False, True), 'train.precision': ('fp32', 'bf16')}, drift
    cfg = train_config(gpu)           # every key is a real TrainConfig key
    assert cfg.device == 'cuda' and cfg.precision == 'bf16' and cfg.compile is True
    for name in gpu['ablations']: assert train_config(gpu, ablation=name).compile is True


def test_paper_smoke_params_flag(tmp_path):
    spec = importlib.util.spec_from_file_location('paper_smoke', ROOT / 'tools' / 'paper_smoke.py')
    ps = importlib.util.module_from_spec(spec); spec.loader.exec_module(ps)
    assert ps.main(['--params', str(tmp_path / 'missing.yaml'), '--keep', str(tmp_path / 'k')]) == 2
    assert not (tmp_path / 'k').exists()   # refused before any copy
    assert ps.main(['--params', 'no-such-profile', '--keep', str(tmp_path / 'k')]) == 2 and not (tmp_path / 'k').exists()
    import inspect
    assert "default='paper-smoke'" in inspect.getsource(ps.main)   # the CPU smoke profile by default


@needs_cuda
def test_gpu_nvjpeg_matches_pil(tmp_path):
    from torchvision.io import read_file
    from qualiclip.scoring import synthetic_jpegs
    files = synthetic_jpegs(tmp_path, 4, 1024, 768)
    gpu = bench.nvjpeg_decode([read_file(str(f)) for f in files], torch.device('cuda'))
    for f, g in zip(files, gpu):
        assert g.is_cuda and g.dtype == torch.uint8 and tuple(g.shape) == (3, 768, 1024)
        ref = torch.from_numpy(bench.pil_decode(f)).permute(2, 0, 1).float()
        d = g.cpu().float() - ref
        psnr = 10 * math.log10(255 ** 2 / max(d.pow(2).mean().item(), 1e-12))
        assert d.abs().mean().item() < 4 and psnr > 30, (f, d.abs().mean().item(), psnr)   # decoders differ in rounding/upsampling only


@needs_cuda
def test_gpu_bf16_fp16_scores_match_fp32_cpu():
    from qualiclip.model import QualiCLIP
    torch.manual_seed(0)
    model = QualiCLIP('RN50-quickgelu', pretrained=None).eval()
    images = bench.parity_images(224, distorted=False)
    r = bench.parity_pair(model, images, torch.device('cuda'))
    for amp in ('bf16', 'fp16'): assert r[amp][0] <= 1e-2, r   # scores within 1e-2 of fp32 on the CPU


@needs_cuda
@pytest.mark.skipif(not (ROOT / 'runs' / 'demo' / 'qualiclip.pth').is_file(), reason='needs the demo checkpoint (make repro)')
def test_gpu_trained_scores_keep_their_ranking():
    from qualiclip.model import QualiCLIP
    model = QualiCLIP.from_checkpoint(ROOT / 'runs' / 'demo' / 'qualiclip.pth').eval()
    r = bench.parity_pair(model, bench.parity_images(224), torch.device('cuda'))
    # a correctness check, looser than the goals the benchmark reports (<= 1e-2, SRCC >= 0.999): this model's scores
    # saturate (softmax of 100 x cosine): bf16 rounding of the features moves mid-range scores by up to ~0.02
    # (0.019 with bf16 autocast on a CPU, 150 images)
    assert r['bf16'][0] <= 0.05 and r['fp16'][0] <= 0.02, r
    for amp in ('bf16', 'fp16'): assert r[amp][1] >= 0.995, r


@needs_cuda
def test_gpu_compiled_training_step(tmp_path):
    from qualiclip.train import Trainer, TrainConfig
    from qualiclip.model import TINY_CONFIG
    cfg = TrainConfig(backbone=TINY_CONFIG, pretrained=None, crop=64, batch_size=2, workers=0, steps=10, warmup_steps=0,
                      lr=1e-3, device='cuda', precision='bf16', compile=True, out=str(tmp_path), progress=False)
    tr = Trainer(cfg)
    assert hasattr(tr.net, '_orig_mod')   # torch.compile's wrapper
    before = {n: p.detach().clone() for n, p in tr.model.visual.named_parameters() if p.requires_grad}
    data = tr.batches()
    r1, r2 = tr.step(next(data)), tr.step(next(data))
    assert all(math.isfinite(r[k]) for r in (r1, r2) for k in ('loss', 'loss_cons', 'loss_pos', 'loss_neg', 'grad_norm'))
    assert tr.step_no == 2
    changed = [n for n, p in tr.model.visual.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2
