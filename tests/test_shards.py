"Parquet parts from WebDataset shards as whole processes: SIGKILL at random moments then resume, torchrun ranks, --rank/--world-size by hand."
import io, os, random, signal, socket, subprocess, sys, tarfile, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qualiclip.model import ASPECTS
from PIL import Image

os.environ.setdefault('HF_HUB_OFFLINE', '1')
ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
N_SHARDS, PER_SHARD = 6, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def job(tmp_path_factory):
    "Six shards of photo crops (one with a corrupt member and a caption), a tiny random checkpoint, the uninterrupted table."
    from qualiclip.core import demo_photo
    from qualiclip.model import TINY_CONFIG, random_official_checkpoint
    d = tmp_path_factory.mktemp('shards')
    names = ['chelsea', 'coffee', 'astronaut', 'rocket', 'camera', 'moon']
    for s in range(N_SHARDS):
        with tarfile.open(d / f'{s:05d}.tar', 'w') as t:
            for j in range(PER_SHARD):
                b = io.BytesIO(); Image.fromarray(demo_photo(names[(s + j) % 6])[8 * j:8 * j + 160, 10 * s:10 * s + 192 + 16 * (j % 2)]).save(b, 'JPEG')
                for name, data in [(f'{s}_{j}.jpg', b.getvalue()), (f'{s}_{j}.txt', b'a caption')]:
                    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
            if s == 2:
                ti = tarfile.TarInfo('corrupt.jpg'); ti.size = 100; t.addfile(ti, io.BytesIO(b.getvalue()[:100]))
    ck = random_official_checkpoint(d / 'tiny.pth', TINY_CONFIG, seed=1)
    cmd = [sys.executable, '-m', 'qualiclip.cli', 'score', str(d / '{00000..00005}.tar'), '--weights', str(ck),
           '--device', 'cpu', '--batch-size', '2', '--workers', '1']
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, '--out', f"{d / 'ref'}/"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return {'dir': d, 'cmd': cmd, 'seconds': time.perf_counter() - t0, 'ref': _merged(d / 'ref')}


def _merged(out: Path) -> pd.DataFrame:
    from qualiclip.shards import merge_parts
    man = merge_parts(out)
    assert man['rows'] == N_SHARDS * PER_SHARD + 1 and man['failed'] == 1, man
    return pd.read_parquet(out / 'scores.parquet')


def _same(a: pd.DataFrame, b: pd.DataFrame):
    "The same rows in the same order; scores equal within float rounding of other batch compositions."
    num = ['score', *ASPECTS]
    pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
    np.testing.assert_allclose(a[num].fillna(-1).to_numpy(), b[num].fillna(-1).to_numpy(), atol=1e-5)


def test_reference_table(job):
    ref = job['ref']
    assert ref.id.tolist()[:PER_SHARD] == [f'0_{j}' for j in range(PER_SHARD)]
    assert ref.error.astype(bool).sum() == 1 and 'corrupt.jpg' in ref.error[ref.error.astype(bool)].iloc[0]
    assert ref.shard.iloc[-1].endswith('00005.tar') and (ref.weights.str.startswith('sha256:')).all()


def test_sigkill_at_random_moments_then_resume(job):
    "Killed with SIGKILL at random moments (any time, then just after a part appears), resumed: the uninterrupted table."
    out = job['dir'] / 'killed'; rng = random.Random(0); kills = []
    def parts(): return len(list(out.glob('part-*.parquet'))) if out.exists() else 0
    for k in range(3):
        p = subprocess.Popen([*job['cmd'], '--out', f'{out}/'], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = parts()
        if k == 0: time.sleep(rng.uniform(0.1, 0.6) * job['seconds'])     # anywhere early: start-up, reading, first batches
        else:                                                             # at a random moment after a part lands: mid-job
            t0 = time.time()
            while parts() == before and p.poll() is None and time.time() - t0 < 120: time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
        p.send_signal(signal.SIGKILL); p.wait(); kills.append(parts())
    print('parts on disk after each SIGKILL:', kills)
    assert any(0 < n < N_SHARDS for n in kills), kills      # at least one kill left a job half done
    r = subprocess.run([*job['cmd'], '--out', f'{out}/'], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'{kills[-1]} already complete' in r.stdout, (kills, r.stdout)   # the resumed run skipped what was done
    assert not list(out.glob('.*tmp*')), list(out.iterdir())               # no temporary file left behind
    _same(_merged(out), job['ref'])


def test_torchrun_two_processes_and_manual_ranks(job):
    "torchrun --nproc_per_node 2: disjoint parts (even to rank 0, odd to rank 1), the table of one process; so do --rank/--world-size."
    from qualiclip.shards import read_part_meta
    out = job['dir'] / 'torchrun'
    args = job['cmd'][3:]
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--nnodes', '1',
                        '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), '-m', 'qualiclip.cli', *args,
                        '--out', f'{out}/'], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'rank 0/2: 3 of 6 parts' in r.stdout and 'rank 1/2: 3 of 6 parts' in r.stdout, r.stdout
    by = [read_part_meta(out / f'part-{i:05d}.parquet')['written_by'] for i in range(N_SHARDS)]
    assert by == [[i % 2, 2] for i in range(N_SHARDS)], by
    _same(_merged(out), job['ref'])
    manual = job['dir'] / 'manual'
    ps = [subprocess.Popen([*job['cmd'], '--out', f'{manual}/', '--rank', str(k), '--world-size', '2'], env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    res = [p.communicate() for p in ps]
    assert all(p.returncode == 0 for p in ps), [e[-2000:] for _, e in res]
    assert [read_part_meta(manual / f'part-{i:05d}.parquet')['written_by'] for i in range(N_SHARDS)] == by
    _same(_merged(manual), job['ref'])
