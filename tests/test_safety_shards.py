"Data safety of `qualiclip score` (CSV and --out DIR/ parts) and `qualiclip merge`: tables never run commands, reuse keyed by content, folders of others left alone, clear messages."
import io, json, os, tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from qualiclip.cli import main
from qualiclip.core import FOLDER_MARK, demo_photo
from qualiclip.model import TINY_CONFIG, QualiCLIP, random_official_checkpoint
from qualiclip import shards


def _jpeg(a) -> bytes:
    b = io.BytesIO(); Image.fromarray(a).save(b, 'JPEG'); return b.getvalue()


def _add(t, name, data):
    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))


def _shard(path: Path, members) -> Path:
    with tarfile.open(path, 'w') as t:
        for name, data in members: _add(t, name, data)
    return path


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp('safety')
    photos = [demo_photo(n)[:96, :128] for n in ('chelsea', 'coffee', 'astronaut', 'rocket')]
    for s in range(2): _shard(d / f'{s:05d}.tar', [(f'{s}_{j}.jpg', _jpeg(photos[(s + j) % 4])) for j in range(3)])
    ck = random_official_checkpoint(d / 'tiny.pth', TINY_CONFIG, seed=1)
    ck2 = random_official_checkpoint(d / 'tiny2.pth', TINY_CONFIG, seed=2)
    return {'dir': d, 'ck': ck, 'ck2': ck2, 'photos': photos}


def _score(env, out, *inputs, extra=(), weights=None):
    return main(['score', *map(str, inputs), '--weights', str(weights or env['ck']), '--device', 'cpu', '--out', f'{out}/', *extra])


# 1. a table never runs a command
def test_load_row_image_refuses_pipe_shard(tmp_path, env):
    marker = tmp_path / 'ran'
    row = pd.Series({'id': '0_0', 'shard': f"pipe:touch {marker}; cat {env['dir'] / '00000.tar'}"})
    with pytest.raises(ValueError, match='not a local file but a URL or a `pipe:` command'): shards.load_row_image(row)
    assert not marker.exists()
    with pytest.raises(ValueError, match='allow_remote=True'): shards.load_row_image(pd.Series({'id': '0_0', 'shard': 'https://host/x.tar'}))
    img = shards.load_row_image(row, allow_remote=True)   # the caller's explicit choice: then it is opened
    assert img.size == (128, 96) and marker.exists()


# 2. reuse keyed by content
def test_other_weights_at_the_same_path_refused_before_the_plan_is_touched(tmp_path, env, capsys):
    out, w = tmp_path / 'job', tmp_path / 'w.pth'
    w.write_bytes(env['ck'].read_bytes())
    assert _score(env, out, env['dir'] / '{00000..00001}.tar', weights=w) == 0
    plan = (out / 'plan.json').read_bytes()
    w.write_bytes(env['ck2'].read_bytes())           # other weights under the same name
    capsys.readouterr()
    assert _score(env, out, env['dir'] / '00000.tar', weights=w) == 2
    assert 'other settings: weights' in capsys.readouterr().err
    assert (out / 'plan.json').read_bytes() == plan   # checked before anything was written


def test_changed_shard_is_rescored_with_a_reason_and_merge_refuses_the_stale_part(tmp_path, env, capsys):
    d = tmp_path / 'sh'; d.mkdir()
    for s in range(2): (d / f'{s:05d}.tar').write_bytes((env['dir'] / f'{s:05d}.tar').read_bytes())
    out = tmp_path / 'job'
    assert _score(env, out, d / '{00000..00001}.tar') == 0 and main(['merge', str(out)]) == 0
    _shard(d / '00001.tar', [('new.jpg', _jpeg(env['photos'][3]))])   # the shard is replaced after its part was written
    os.utime(d / '00001.tar', ns=(4 * 10**18, 4 * 10**18))
    capsys.readouterr()
    assert main(['merge', str(out)]) == 2                             # no stale table with exit 0
    assert '1 made from other inputs or settings (00001)' in capsys.readouterr().err
    assert _score(env, out, d / '{00000..00001}.tar') == 0
    o = capsys.readouterr()
    assert 'part-00001.parquet: its input changed since it was scored' in o.err and '1 already complete, 1 written' in o.out
    assert main(['merge', str(out)]) == 0
    assert pd.read_parquet(out / 'scores.parquet').id.tolist() == ['0_0', '0_1', '0_2', 'new']


def test_weights_id_and_model_id_follow_content(tmp_path):
    (tmp_path / 'a').write_bytes(b'x'); wa = shards.weights_id(tmp_path / 'a')
    (tmp_path / 'a').write_bytes(b'y'); assert shards.weights_id(tmp_path / 'a') != wa
    m = QualiCLIP(TINY_CONFIG)
    before = shards.model_id(m)
    with torch.no_grad(): next(m.parameters()).add_(1)
    assert shards.model_id(m) != before


# 3. file lists: names are literal
def test_file_list_names_are_literal_in_parts(tmp_path, env):
    imgs = tmp_path / 'imgs'; imgs.mkdir()
    Image.fromarray(env['photos'][0]).save(imgs / 'a[1].png'); Image.fromarray(env['photos'][1]).save(imgs / 'a1.png')
    (tmp_path / 'l.txt').write_text('imgs/a[1].png\nimgs/b[1].png\n')   # b[1].png does not exist: never the glob b1.png...
    Image.fromarray(env['photos'][2]).save(imgs / 'b1.png')
    parts = shards.plan_parts([str(tmp_path / 'l.txt')])
    assert [(Path(p).name, bool(e)) for p, e in parts[0]['files']] == [('a[1].png', False), ('b[1].png', True)]


# 4. shards
def test_duplicate_keys_get_unique_ids(tmp_path, env):
    s = _shard(tmp_path / 'd.tar', [('k.jpg', _jpeg(env['photos'][0])), ('j.jpg', _jpeg(env['photos'][1])), ('k.jpg', _jpeg(env['photos'][2][:40]))])
    ids = [i for i, *_ in shards.shard_members(str(s))]
    assert ids == ['k', 'j', 'k#2']
    assert shards.load_row_image({'id': 'k', 'shard': str(s)}).size == (128, 96)
    with pytest.raises(ValueError, match="the key 'k' already named a sample"): shards.load_row_image({'id': 'k#2', 'shard': str(s)})


def test_truncated_tar_exits_1_and_missing_shards_exit_2(tmp_path, env, capsys):
    src = env['dir'] / '00000.tar'
    with tarfile.open(src) as t: cut = t.getmembers()[2].offset
    (tmp_path / 'cut.tar').write_bytes(src.read_bytes()[:cut])        # cut between two members: tarfile itself says nothing
    assert _score(env, tmp_path / 'a', tmp_path / 'cut.tar') == 1
    assert 'cut short' in capsys.readouterr().err
    assert _score(env, tmp_path / 'a', tmp_path / 'cut.tar') == 1      # and again on a rerun: the part is there, the shard still short
    for pattern, msg in [('nope/*.tar', 'matches no shard'), ('{00000..00003}.tar', '2 of the shards'), ('x.tar', 'x.tar: no such shard'),
                         ('*.jpg', 'the pattern matches nothing')]:
        capsys.readouterr()
        assert _score(env, tmp_path / 'b', env['dir'] / pattern) == 2, pattern
        assert msg in capsys.readouterr().err, pattern
    assert not (tmp_path / 'b' / 'plan.json').exists()


def test_rank_needs_world_size(tmp_path, env, capsys, monkeypatch):
    monkeypatch.setenv('RANK', '1'); monkeypatch.delenv('WORLD_SIZE', raising=False)
    assert _score(env, tmp_path / 'r', env['dir'] / '00000.tar') == 2
    assert '$RANK is set but --world-size (or $WORLD_SIZE) is not' in capsys.readouterr().err
    monkeypatch.setenv('RANK', 'abc'); monkeypatch.setenv('WORLD_SIZE', '2')
    assert _score(env, tmp_path / 'r', env['dir'] / '00000.tar') == 2
    assert "$RANK='abc' is not a whole number" in capsys.readouterr().err


def test_one_shard_under_two_spellings(tmp_path, env, capsys, monkeypatch):
    monkeypatch.chdir(env['dir'])
    assert _score(env, tmp_path / 'o', '00000.tar', './00000.tar') == 2
    assert 'named twice in the inputs (00000.tar and ./00000.tar)' in capsys.readouterr().err


def test_damaged_plan_is_named_with_its_line(tmp_path, env, capsys):
    out = tmp_path / 'job'
    assert _score(env, out, env['dir'] / '00000.tar') == 0
    (out / 'plan.json').write_text('{\n"model": "qualiclip",\n"parts": [\n')
    capsys.readouterr()
    assert main(['merge', str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'plan.json'} is damaged (line 4" in err and 'run the same qualiclip score command again' in err
    assert _score(env, out, env['dir'] / '00000.tar') == 0 and main(['merge', str(out)]) == 0   # the rerun writes it anew


def test_foreign_folder_is_refused_before_any_work(tmp_path, env, capsys):
    mine = tmp_path / 'mydata'; mine.mkdir()
    (mine / 'plan.json').write_text('my own plan'); (mine / 'manifest.json').write_text('{"mine": 1}')
    assert _score(env, mine, env['dir'] / '00000.tar') == 2
    assert 'is not empty and is not a parts folder' in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ['manifest.json', 'plan.json'] and (mine / 'plan.json').read_text() == 'my own plan'
    assert main(['merge', str(mine)]) == 2 and (mine / 'manifest.json').read_text() == '{"mine": 1}'
    new = tmp_path / 'new'
    assert _score(env, new, env['dir'] / '00000.tar') == 0
    assert json.loads((new / FOLDER_MARK).read_text())['kind'] == 'parts'


def test_embeddings_with_an_all_failed_part(tmp_path, env):
    bad = _shard(tmp_path / 'bad.tar', [('x.jpg', b'not a jpeg')])
    out = tmp_path / 'job'
    for _ in range(2): assert _score(env, out, env['dir'] / '00000.tar', bad, extra=['--embeddings']) == 0
    assert main(['merge', str(out)]) == 0
    t = pd.read_parquet(out / 'scores.parquet')
    assert t.embedding.isna().tolist() == [False] * 3 + [True] and len(t.embedding[0]) == QualiCLIP.from_checkpoint(env['ck']).text_features.shape[1]


def test_resize_short_lifts_the_native_limit_on_members(tmp_path, env):
    out = tmp_path / 'job'
    assert _score(env, out, env['dir'] / '00000.tar', extra=['--max-pixels', '1000', '--resize-short', '64']) == 0
    assert (pd.read_parquet(out / 'part-00000.parquet').error == '').all()


# 5. score (CSV)
def test_csv_file_lists(tmp_path, env, capsys):
    Image.fromarray(env['photos'][0]).save(tmp_path / 'a.png')
    (tmp_path / 'l.txt').write_text('a.png\n')
    assert main(['score', str(tmp_path / 'l.txt'), '--weights', str(env['ck']), '--device', 'cpu', '--out', str(tmp_path / 's.csv')]) == 0
    assert pd.read_csv(tmp_path / 's.csv').path.tolist() == [str(tmp_path / 'a.png')]
    raw = os.fsencode(str(tmp_path)) + b'/caf\xe9.png'                # a Latin-1 list naming a Latin-1 file
    Image.fromarray(env['photos'][1]).save(os.fsdecode(raw), format='PNG')
    (tmp_path / 'lat.txt').write_bytes(b'caf\xe9.png\n')
    assert main(['score', str(tmp_path / 'lat.txt'), '--weights', str(env['ck']), '--device', 'cpu', '--out', str(tmp_path / 't.csv')]) == 0
    assert pd.read_csv(tmp_path / 't.csv').path.tolist() == [str(tmp_path) + '/caf\\xe9.png']
    (tmp_path / 'u.txt').write_bytes('a.png\n'.encode('utf-16'))
    capsys.readouterr()
    assert main(['score', str(tmp_path / 'u.txt'), '--weights', str(env['ck']), '--device', 'cpu', '--out', str(tmp_path / 'u.csv')]) == 2
    assert f"{tmp_path / 'u.txt'}: not a text file list (UTF-16 or binary)" in capsys.readouterr().err


def test_negative_max_pixels_refused(tmp_path, env, capsys):
    assert main(['score', str(env['dir'] / '00000.tar'), '--weights', str(env['ck']), '--max-pixels', '-1', '--out', f"{tmp_path / 'j'}/"]) == 2
    assert '--max-pixels -1: give a number >= 0' in capsys.readouterr().err and not (tmp_path / 'j').exists()


def test_degenerate_checkpoint_refused(tmp_path, env, capsys):
    sd = torch.load(env['ck'], weights_only=True)
    sd['prompts_features'] = torch.zeros_like(sd['prompts_features']); torch.save(sd, tmp_path / 'zero.pth')
    with pytest.raises(ValueError, match='degenerate'): QualiCLIP.from_checkpoint(tmp_path / 'zero.pth')
    Image.fromarray(env['photos'][0]).save(tmp_path / 'a.png')
    assert main(['score', str(tmp_path / 'a.png'), '--weights', str(tmp_path / 'zero.pth'), '--out', str(tmp_path / 's.csv')]) == 2
    assert 'every image would score 0.5' in capsys.readouterr().err and not (tmp_path / 's.csv').exists()
    pf = sd['prompts_features'] = torch.load(env['ck'], weights_only=True)['prompts_features'].clone()
    pf[1] = pf[0]; torch.save(sd, tmp_path / 'same.pth')                # a pair whose two prompts are one
    with pytest.raises(ValueError, match='1 of 7 pairs with identical'): QualiCLIP.from_checkpoint(tmp_path / 'same.pth')


def test_ctrl_c_prints_one_summary_line(tmp_path, env, capsys):
    from qualiclip.scoring import register_scorer, SCORERS
    class Stop:
        name, higher_better, device, calls = 'stop', True, 'cpu', 0
        def score_batch(self, x):
            Stop.calls += 1
            if Stop.calls > 1: raise KeyboardInterrupt
            return x.float().mean((1, 2, 3))
    register_scorer('stop-test', lambda **kw: Stop())
    try:
        d = tmp_path / 'imgs'; d.mkdir()
        for i in range(12): Image.fromarray(np.full((16, 16 + i, 3), 9 * i, np.uint8)).save(d / f'{i:02d}.png')
        assert main(['score', str(d), '--model', 'stop-test', '--batch-size', '1', '--out', str(tmp_path / 's.csv')]) == 130
    finally: SCORERS.pop('stop-test')
    o = capsys.readouterr().out
    assert sum('not scored' in l for l in o.splitlines()) == 1 and '11 files not scored (interrupted' in o, o   # not 11 lines
    assert (pd.read_csv(tmp_path / 's.csv').error == 'not scored: interrupted').sum() == 11


def test_other_temperature_is_other_settings(tmp_path, env, capsys):
    out = tmp_path / 'job'
    assert _score(env, out, env['dir'] / '00000.tar') == 0
    capsys.readouterr()
    assert _score(env, out, env['dir'] / '00000.tar', extra=['--temperature', '2']) == 2   # other scores: never a reused part
    assert "other settings: rule {'scale': 100.0} (now {'scale': 50.0})" in capsys.readouterr().err


def test_parts_folder_of_an_earlier_version_is_adopted(tmp_path, env, capsys):
    "A parts folder written before folders were marked (only a plan, parts with this project's record, a table) resumes."
    out = tmp_path / 'job'
    assert _score(env, out, env['dir'] / '00000.tar') == 0
    (out / FOLDER_MARK).unlink()                                   # as an earlier version left it
    parts = sorted(p.name for p in out.glob('part-*.parquet')); before = [(out / p).read_bytes() for p in parts]
    assert _score(env, out, env['dir'] / '00000.tar') == 0         # nothing to redo: the same parts stay
    assert [(out / p).read_bytes() for p in parts] == before
    assert json.loads((out / FOLDER_MARK).read_text())['kind'] == 'parts'
    (out / FOLDER_MARK).unlink(); (out / 'notes.txt').write_text('mine')   # anything else in it: not claimed
    assert _score(env, out, env['dir'] / '00000.tar') == 2 and not (out / FOLDER_MARK).exists()
