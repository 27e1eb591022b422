"""Data safety of `evaluate` and `fit-prompts`: resumed work is keyed by content (weights, prompts, images), never by a
path; default outputs never replace another command's files; every output is checked before any work."""
import hashlib, json, os, pickle, shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from qualiclip.cli import main
from qualiclip.core import OutputError, demo_photo, folder_mark
from qualiclip.datasets import miniature
from qualiclip.model import TINY_CONFIG, random_official_checkpoint


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    "Two tiny checkpoints (different weights), a 6-image KonIQ miniature and a 12-image labelled index."
    d = tmp_path_factory.mktemp('safety')
    random_official_checkpoint(d / 'ck1.pth', TINY_CONFIG, seed=1)
    random_official_checkpoint(d / 'ck2.pth', TINY_CONFIG, seed=2)
    miniature('koniq10k', d / 'koniq', n=6)
    rows = []
    (d / 'mini').mkdir()
    for ph in ('astronaut', 'coffee', 'chelsea'):
        im = Image.fromarray(demo_photo(ph)).convert('RGB').resize((64, 56), Image.BICUBIC)
        for lvl in range(4):
            name = f'{ph}_{lvl}.png'; (im.filter(ImageFilter.GaussianBlur(1.5 * lvl)) if lvl else im).save(d / 'mini' / name)
            rows.append(dict(dataset='demo', image=name, path=name, mos=float(4 - lvl), higher_better=True, ref=f'{ph}_0.png',
                             dist_type='gblur', dist_level=float(lvl)))
    pd.DataFrame(rows).to_csv(d / 'mini' / 'index.csv', index=False)
    return d


def evaluate(work, out, weights, capsys, *more):
    "`qualiclip evaluate koniq10k` through the command line; (exit code, stderr)."
    capsys.readouterr()
    rc = main(['evaluate', 'koniq10k', str(work / 'koniq'), '--weights', str(weights), '--device', 'cpu',
               '--out', str(out), '--batch-size', '3', *more])
    return rc, capsys.readouterr().err


def sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# ---- evaluate: resume keyed by content ----

def test_evaluate_redoes_after_weights_change(work, tmp_path, capsys):
    "Retraining into the same checkpoint file: the next evaluation scores again, says why, and reports the new metrics."
    w = tmp_path / 'qualiclip.pth'; shutil.copy(work / 'ck1.pth', w)
    assert evaluate(work, tmp_path / 'ev', w, capsys)[0] == 0
    m1 = json.loads((tmp_path / 'ev' / 'metrics.json').read_text())
    shutil.copy(work / 'ck2.pth', w)                                    # same path, other weights
    rc, err = evaluate(work, tmp_path / 'ev', w, capsys)
    assert rc == 0 and 'another scorer' in err and 'weights file' in err and sha(work / 'ck2.pth')[:12] in err, err
    assert evaluate(work, tmp_path / 'fresh', work / 'ck2.pth', capsys)[0] == 0   # reference: the new weights from scratch
    got, ref = (pd.read_csv(tmp_path / d / 'scores.csv').set_index('image').score.sort_index() for d in ('ev', 'fresh'))
    assert got.tolist() == pytest.approx(ref.tolist(), abs=1e-6)
    m2 = json.loads((tmp_path / 'ev' / 'metrics.json').read_text())
    assert m2['srcc'] == pytest.approx(json.loads((tmp_path / 'fresh' / 'metrics.json').read_text())['srcc'])
    assert m2['scorer_id'] != m1['scorer_id'] and m2['weights_sha256'] == sha(work / 'ck2.pth')
    r = json.loads((tmp_path / 'ev' / 'resume.json').read_text())
    assert r['files']['weights'] == {'path': str(w), 'sha256': sha(work / 'ck2.pth')} and r['scorer_id'] == m2['scorer_id']


def test_evaluate_reuses_unchanged_and_redoes_changed_image(work, tmp_path, capsys):
    "Same weights: a second run scores nothing; an image rewritten in place is scored again (and only it)."
    root = tmp_path / 'koniq'; shutil.copytree(work / 'koniq', root)
    run = lambda: main(['evaluate', 'koniq10k', str(root), '--weights', str(work / 'ck1.pth'), '--device', 'cpu',
                        '--out', str(tmp_path / 'ev')])
    assert run() == 0
    s1 = pd.read_csv(tmp_path / 'ev' / 'scores.csv', dtype={'file_size': str})
    assert (s1.file_sha256 == [sha(p) for p in s1.path]).all() and (s1.file_size == [str(os.path.getsize(p)) for p in s1.path]).all()
    capsys.readouterr(); assert run() == 0
    assert 'scored 0 image(s)' in capsys.readouterr().out
    victim = Path(s1.path[2]); other = Path(s1.path[3])
    shutil.copy(other, victim)                                          # new content under an old name
    capsys.readouterr(); assert run() == 0
    o = capsys.readouterr()
    assert 'scored 1 image(s)' in o.out and '1 image(s) changed' in o.err and s1.image[2] in o.err, o
    s2 = pd.read_csv(tmp_path / 'ev' / 'scores.csv').set_index('image')
    assert s2.score[s1.image[2]] == pytest.approx(s2.score[s1.image[3]], abs=1e-6)   # now the copy's score


def test_evaluate_redoes_after_prompts_change(work, tmp_path, capsys):
    "QualiCLIP+: the prompts file rewritten at the same path makes the evaluation score again."
    from qualiclip.prompts import QualiCLIPPlus
    p = tmp_path / 'prompts.pth'
    for seed in (0, 1):
        m = QualiCLIPPlus.from_checkpoint(work / 'ck1.pth')
        with torch.no_grad(): m.prompt_learner.ctx.normal_(generator=torch.Generator().manual_seed(seed))
        m.save_prompts(p)
        rc, err = evaluate(work, tmp_path / 'ev', work / 'ck1.pth', capsys, '--model', 'qualiclip+', '--prompts', str(p))
        assert rc == 0, err
    assert 'another scorer' in err and 'prompts file' in err, err
    assert json.loads((tmp_path / 'ev' / 'resume.json').read_text())['sha256'] == {'weights': sha(work / 'ck1.pth'), 'prompts': sha(p)}


def test_evaluate_old_scores_without_identity_are_redone(work, tmp_path, capsys):
    "A scores.csv that records no weights or image identities is never trusted."
    assert evaluate(work, tmp_path / 'ev', work / 'ck1.pth', capsys)[0] == 0
    s = pd.read_csv(tmp_path / 'ev' / 'scores.csv'); s.score = 0.5
    s.drop(columns=['scorer_id', 'file_size', 'file_sha256']).to_csv(tmp_path / 'ev' / 'scores.csv', index=False)
    rc, err = evaluate(work, tmp_path / 'ev', work / 'ck1.pth', capsys)
    assert rc == 0 and 'does not record' in err
    assert (pd.read_csv(tmp_path / 'ev' / 'scores.csv').score != 0.5).all()


# ---- evaluate --out: a report folder whose own files are checked before scoring ----

def test_evaluate_out_files_checked_before_scoring(work, tmp_path, capsys):
    out = tmp_path / 'report'; out.mkdir(); (out / 'notes.txt').write_text('mine')
    png = (work / 'koniq').rglob('*.jpg').__next__().read_bytes()
    (out / 'metrics.json').write_bytes(png)                             # someone's image under our fixed name
    rc, err = evaluate(work, out, work / 'ck1.pth', capsys)
    assert rc == 2 and 'metrics.json' in err and 'holds image' in err, err
    assert (out / 'metrics.json').read_bytes() == png and not (out / 'scores.csv').exists()   # nothing scored or written
    (out / 'metrics.json').unlink(); (out / 'timing.json').mkdir()
    rc, err = evaluate(work, out, work / 'ck1.pth', capsys)
    assert rc == 2 and 'timing.json' in err and not (out / 'scores.csv').exists(), err
    (out / 'timing.json').rmdir()
    assert evaluate(work, out, work / 'ck1.pth', capsys)[0] == 0
    assert (out / 'notes.txt').read_text() == 'mine' and folder_mark(out) is None   # a foreign folder is only added to
    assert evaluate(work, tmp_path / 'new', work / 'ck1.pth', capsys)[0] == 0
    assert folder_mark(tmp_path / 'new')['kind'] == 'output'


# ---- fit-prompts ----

def fit(work, out, capsys, *more, weights=None):
    capsys.readouterr()
    rc = main(['fit-prompts', '--weights', str(weights or work / 'ck1.pth'), '--dataset', 'demo', '--root',
               str(work / 'mini' / 'index.csv'), '--out', str(out), '--epochs', '1', '--crop', '32', '--batch-size', '4',
               '--val-frac', '0.25', '--device', 'cpu', '--no-progress', *more])
    o = capsys.readouterr()
    return rc, o.err + o.out


def test_fit_prompts_keeps_the_training_runs_metrics(work, tmp_path, capsys):
    "`--out run/prompts.pth` next to a training run's metrics.json: that file stays, the prompts' metrics get their own name."
    run = tmp_path / 'run'; run.mkdir(); (run / 'metrics.json').write_text('{"best_val_srcc": 0.9}\n')
    rc, err = fit(work, run / 'prompts.pth', capsys)
    assert rc == 0, err
    assert (run / 'metrics.json').read_text() == '{"best_val_srcc": 0.9}\n'
    assert json.loads((run / 'prompts.metrics.json').read_text())['epochs_run'] == 1
    assert folder_mark(run / 'prompts.run') == {'project': 'qualiclip', 'kind': 'run', 'command': 'fit-prompts'}


def test_fit_prompts_outputs_checked_before_training(work, tmp_path, capsys):
    from qualiclip.prompts import fit_prompts_cmd
    (tmp_path / 'p.pth').mkdir()                                        # --out names a folder
    kw = dict(root=str(work / 'mini' / 'index.csv'), epochs=1, crop=32, batch_size=4, device='cpu', progress=False)
    with pytest.raises(OutputError, match=r'p\.pth is a folder'): fit_prompts_cmd(str(work / 'ck1.pth'), 'demo', out=str(tmp_path / 'p.pth'), **kw)
    assert not (tmp_path / 'p.run').exists()                            # no training started
    foreign = tmp_path / 'q.run'; foreign.mkdir(); (foreign / 'data.txt').write_text('x')   # the default run folder, not ours
    rc, err = fit(work, tmp_path / 'q.pth', capsys)
    assert rc == 2 and 'q.run' in err and 'not empty' in err and not (tmp_path / 'q.pth').exists(), err
    (tmp_path / 'm.metrics.json').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))   # default metrics name holding an image
    rc, err = fit(work, tmp_path / 'm.pth', capsys)
    assert rc == 2 and 'm.metrics.json' in err and not (tmp_path / 'm.run').exists(), err
    rc, err = fit(work, tmp_path / 's.pth', capsys, '--metrics', str(tmp_path / 's.pth'))
    assert rc == 2 and 'different' in err and not (tmp_path / 's.run').exists(), err
    tr = tmp_path / 'train_run'; tr.mkdir(); (tr / 'qualiclip.pth').write_bytes(b'weights')   # a training run, marked
    json.dump({'project': 'qualiclip', 'kind': 'run'}, open(tr / '.qualiclip.json', 'w'))
    rc, err = fit(work, tmp_path / 't.pth', capsys, '--run', str(tr))
    assert rc == 2 and 'not of fit-prompts' in err and sorted(os.listdir(tr)) == ['.qualiclip.json', 'qualiclip.pth'], err


def test_fit_prompts_run_resume_keyed_by_weights_content(work, tmp_path, capsys):
    "The run's checkpoint resumes only with the same weights content: rewritten weights at the same path start again."
    from qualiclip.prompts import QualiCLIPPlus, fit_prompts, prompt_splits, read_table
    tr, va, te, _ = prompt_splits(read_table('demo', work / 'mini' / 'index.csv'), 'demo', val_frac=0.25)
    w = tmp_path / 'w.pth'; shutil.copy(work / 'ck1.pth', w)
    kw = dict(epochs=2, crop=32, batch_size=4, progress=False, run=tmp_path / 'run')
    r = fit_prompts(QualiCLIPPlus.from_checkpoint(w), tr, va, stop_after=1, **kw); assert r['epochs_run'] == 1
    capsys.readouterr()
    r = fit_prompts(QualiCLIPPlus.from_checkpoint(w), tr, va, stop_after=1, **kw)
    assert 'resuming' in capsys.readouterr().err and r['epochs_run'] == 2     # same weights: resumed
    shutil.copy(work / 'ck2.pth', w)
    r = fit_prompts(QualiCLIPPlus.from_checkpoint(w), tr, va, stop_after=1, **kw)
    err = capsys.readouterr().err
    assert 'resuming' not in err and 'weights_sha256' in err and 'starting again' in err and r['epochs_run'] == 1, err
    assert torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)['config']['weights_sha256'] == sha(work / 'ck2.pth')


class Thing:   # a class torch's weights-only loader refuses
    pass


@pytest.mark.parametrize('bad', ['damaged', 'no config', 'pickle', 'training run'])
def test_fit_prompts_bad_run_checkpoint_one_line(work, tmp_path, capsys, bad):
    "A damaged, foreign or pickled run checkpoint: one line naming it and what to do; the file is left as it was."
    run = tmp_path / 'run'; run.mkdir(); ckf = run / 'checkpoint.pt'
    json.dump({'project': 'qualiclip', 'kind': 'run', 'command': 'fit-prompts'}, open(run / '.qualiclip.json', 'w'))
    if bad == 'damaged': ckf.write_bytes(b'PK\x03\x04' + bytes(300))   # a truncated archive
    elif bad == 'no config': torch.save({'ctx': torch.zeros(2)}, ckf)
    elif bad == 'pickle': torch.save({'config': Thing()}, ckf)
    else: torch.save({'config': {'steps': 10}, 'model': {}, 'step': 3}, ckf)   # a training run's checkpoint.pt
    before = ckf.read_bytes()
    rc, err = fit(work, tmp_path / 'p.pth', capsys, '--run', str(run))
    line = [l for l in err.splitlines() if 'error' in l]
    assert rc == 2 and len(line) == 1 and str(ckf) in line[0] and ('--run' in line[0] or 'remove' in line[0].lower()), err
    assert "error: 'config'" not in err and 'Traceback' not in err and 'WeightsUnpickler' not in err, err
    if bad == 'pickle': assert 'never unpickled' in line[0] and 'weights-only' in line[0], err
    if bad in ('no config', 'training run'): assert 'not a fit-prompts run checkpoint' in line[0], err
    assert ckf.read_bytes() == before and not (tmp_path / 'p.pth').exists()
    assert ' train, ' not in err   # refused before the data and the model were loaded
    if bad == 'damaged':   # asked to start again, a damaged checkpoint of ours is replaced
        rc, err = fit(work, tmp_path / 'p.pth', capsys, '--run', str(run), '--resume', 'no')
        assert rc == 0 and sorted(torch.load(ckf, weights_only=True)) == sorted(['best_ctx', 'config', 'ctx', 'optim', 'sched', 'state']), err


def test_read_prompts_pickle_says_weights_only(tmp_path):
    from qualiclip.prompts import read_prompts
    torch.save({'params': Thing()}, tmp_path / 'p.pth')
    with pytest.raises(ValueError) as e: read_prompts(tmp_path / 'p.pth')
    msg = str(e.value)
    assert str(tmp_path / 'p.pth') in msg and 'never unpickled' in msg and 'weights_only=True' in msg and 'WeightsUnpickler' not in msg


def test_fit_prompts_adopts_its_own_unmarked_run(work, tmp_path, capsys):
    "A run folder written before folders were marked, holding a fit-prompts checkpoint, resumes; one holding anything else is refused."
    from qualiclip.prompts import QualiCLIPPlus, fit_prompts, prompt_splits, read_table
    tr, va, te, _ = prompt_splits(read_table('demo', work / 'mini' / 'index.csv'), 'demo', val_frac=0.25)
    kw = dict(epochs=2, crop=32, batch_size=4, progress=False, run=tmp_path / 'run')
    fit_prompts(QualiCLIPPlus.from_checkpoint(work / 'ck1.pth'), tr, va, stop_after=1, **kw)
    (tmp_path / 'run' / '.qualiclip.json').unlink()                       # as an earlier version left it
    capsys.readouterr()
    r = fit_prompts(QualiCLIPPlus.from_checkpoint(work / 'ck1.pth'), tr, va, stop_after=1, **kw)
    assert 'resuming' in capsys.readouterr().err and r['epochs_run'] == 2
    other = tmp_path / 'other'; other.mkdir(); torch.save({'config': {'steps': 10}, 'model': {}}, other / 'checkpoint.pt')
    with pytest.raises(ValueError, match='not a training run of this project'):
        fit_prompts(QualiCLIPPlus.from_checkpoint(work / 'ck1.pth'), tr, va, stop_after=1, **{**kw, 'run': other})
    assert sorted(p.name for p in other.iterdir()) == ['checkpoint.pt']
