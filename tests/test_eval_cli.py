"""The `qualiclip evaluate` command end to end, in a subprocess, on a miniature dataset built in its owners' layout."""
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from qualiclip.datasets import miniature

ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'DVC_NO_ANALYTICS': '1'}


def run_cli(*args):
    "Run `python -m`-style `qualiclip` with the installed entry point's main()."
    code = 'import sys; from qualiclip.cli import main; sys.exit(main(sys.argv[1:]))'
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize('name', ['csiq', 'koniq10k'])
def test_evaluate_cli_matches_scipy(tmp_path, name):
    root = miniature(name, tmp_path / name, n=6)
    out = tmp_path / 'eval'
    r = run_cli('evaluate', name, str(root), '--model', 'qualiclip', '--backbone', 'qualiclip-tiny', '--random-init',
                '--device', 'cpu', '--out', str(out), '--batch-size', '4')
    assert r.returncode == 0, r.stderr
    assert 'images/s' in r.stdout
    s, m = pd.read_csv(out / 'scores.csv'), json.loads((out / 'metrics.json').read_text())
    q = s.mos if bool(s.higher_better.iloc[0]) else -s.mos
    assert m['srcc'] == pytest.approx(stats.spearmanr(s.score, q)[0], abs=1e-9)
    assert m['plcc'] == pytest.approx(stats.pearsonr(s.score, q)[0], abs=1e-9)
    assert m['krcc'] == pytest.approx(stats.kendalltau(s.score, q)[0], abs=1e-9)
    assert m['n'] == len(s) and m['dataset'] == name and m['label_higher_better'] == (name != 'csiq')
    assert (out / 'timing.json').exists()


def test_evaluate_cli_wrong_root(tmp_path):
    r = run_cli('evaluate', 'live', str(tmp_path / 'missing'), '--backbone', 'qualiclip-tiny', '--random-init',
                '--out', str(tmp_path / 'eval'))
    assert r.returncode == 2
    assert 'live' in r.stderr and 'missing' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path / 'eval' / 'scores.csv').exists()


def test_evaluate_cli_help():
    r = run_cli('evaluate', '--help')
    assert r.returncode == 0 and '--niqe-params' in r.stdout and '--split' in r.stdout


def test_score_niqe_params_spelling(tmp_path):
    "`qualiclip score --model niqe` takes --niqe-params as evaluate does; the old --weights spelling warns and gives the same scores."
    import warnings
    import pandas as pd
    from qualiclip.core import write_demo_photos
    from qualiclip.niqe import fit_niqe, save_niqe_params
    from qualiclip.scoring import score_cmd
    photos = write_demo_photos(tmp_path / 'train', 'train')
    npz = save_niqe_params(fit_niqe(tmp_path / 'train'), tmp_path / 'niqe.npz')
    test = write_demo_photos(tmp_path / 'test', 'test')
    assert score_cmd([str(tmp_path / 'test')], model='niqe', niqe_params=str(npz), out=str(tmp_path / 'a.csv')) == 0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert score_cmd([str(tmp_path / 'test')], model='niqe', weights=str(npz), out=str(tmp_path / 'b.csv')) == 0
    assert any(issubclass(x.category, FutureWarning) and '--niqe-params' in str(x.message) for x in w)
    a, b = pd.read_csv(tmp_path / 'a.csv'), pd.read_csv(tmp_path / 'b.csv')
    assert a.score.notna().all() and a.score.tolist() == b.score.tolist()
