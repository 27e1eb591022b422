"""The Python entry points (`create_metric`, `QualiCLIP.score`/`forward` on files) give the numbers `qualiclip score` writes;
`--weights released` / `weights='released'` fetch once into torch.hub's cache, offline they stop at once with one line."""
import contextlib, io, os, shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

os.environ.setdefault('HF_HUB_OFFLINE', '1')
import qualiclip
from qualiclip import cli
from qualiclip.core import load_image, write_demo_photos
from qualiclip.core import sha256sum
from qualiclip.model import RELEASED_URL, TINY_CONFIG, QualiCLIP, WeightsUnavailableError, random_official_checkpoint


def _score(*args):
    "`qualiclip score ARGS` in this process: (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = cli.main(['score', *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "A tiny checkpoint, the demo test photos and their `qualiclip score` CSV."
    d = tmp_path_factory.mktemp('api')
    ck = random_official_checkpoint(d / 'tiny.pth', TINY_CONFIG, seed=1)
    files = write_demo_photos(d / 'demo', 'test')
    rc, _, err = _score(*files, '--weights', ck, '--device', 'cpu', '--out', d / 'scores.csv')
    assert rc == 0, err
    csv = pd.read_csv(d / 'scores.csv')
    assert [Path(p).name for p in csv.path] == [f.name for f in files]
    return d, ck, files, torch.tensor(csv.score.values, dtype=torch.float32)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    "An empty torch.hub cache (TORCH_HOME), offline; the file `released` would be fetched to."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch')); monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    old = torch.hub._hub_dir; torch.hub._hub_dir = None   # TORCH_HOME is read only when no folder was set
    f = Path(torch.hub.get_dir()) / 'checkpoints' / 'qualiclip.pth'
    assert str(f).startswith(str(tmp_path))
    yield f
    torch.hub._hub_dir = old


def test_create_metric_on_files_tensors_and_lists(demo):
    d, ck, files, ref = demo
    m = qualiclip.create_metric('qualiclip', weights=str(ck), device='cpu')
    assert isinstance(m, torch.nn.Module) and (m.lower_better, m.score_range) == (False, (0.0, 1.0))
    torch.testing.assert_close(m(files), ref, atol=1e-6, rtol=0)                                  # a list of files
    torch.testing.assert_close(m(files[1]), ref[1:], atol=1e-6, rtol=0)                          # one file (a Path)
    torch.testing.assert_close(m(load_image(files[0])[None]), ref[:1], atol=1e-6, rtol=0)        # a (B,3,H,W) batch in [0,1]
    torch.testing.assert_close(m([Image.open(files[1]), load_image(files[0]), str(files[1])]), ref[[1, 0, 1]], atol=1e-6, rtol=0)


def test_as_loss_gives_gradients(demo):
    d, ck, files, ref = demo
    m = qualiclip.create_metric('qualiclip', weights=str(ck), device='cpu', as_loss=True)
    x = load_image(files[0])[None].requires_grad_()
    s = m(x); s.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in m.parameters())   # the scorer stays frozen
    torch.testing.assert_close(s.detach(), ref[:1], atol=1e-6, rtol=0)
    assert not qualiclip.create_metric('qualiclip', weights=str(ck), device='cpu')(x).requires_grad


def test_qualiclip_score_and_forward_take_files(demo):
    d, ck, files, ref = demo
    q = QualiCLIP.from_checkpoint(ck)
    torch.testing.assert_close(q.score(files[0]), ref[:1], atol=1e-6, rtol=0)
    torch.testing.assert_close(q.score([str(f) for f in files]), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(q(files), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(q(Image.open(files[1])), ref[1:], atol=1e-6, rtol=0)
    x = torch.rand(2, 3, 64, 80)
    torch.testing.assert_close(q(x), q.score_batch(x))                      # a batch: the same as score_batch


def test_weights_released_offline_fails_at_once(demo, hub):
    d, ck, files, ref = demo
    rc, out, err = _score(files[0], '--weights', 'released', '--out', d / 'rel.csv')
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert RELEASED_URL in err and f'place it at {hub}' in err and not (d / 'rel.csv').exists()
    with pytest.raises(WeightsUnavailableError, match='HF_HUB_OFFLINE'): qualiclip.create_metric('qualiclip', weights='released')


def test_weights_released_from_the_cache(demo, hub):
    d, ck, files, ref = demo
    hub.parent.mkdir(parents=True); shutil.copy(ck, hub)
    with pytest.raises(WeightsUnavailableError, match='no SHA-256 was recorded'):   # placed by hand, no digest: never used
        qualiclip.create_metric('qualiclip', weights='released', device='cpu')
    (hub.parent / 'qualiclip.pth.sha256').write_text(sha256sum(ck) + '\n')
    torch.testing.assert_close(qualiclip.create_metric('qualiclip', weights='released', device='cpu')(files), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(QualiCLIP.from_checkpoint('released').score(files), ref, atol=1e-6, rtol=0)
    rc, _, err = _score(*files, '--weights', 'released', '--device', 'cpu', '--out', d / 'rel.csv')
    assert rc == 0, err
    torch.testing.assert_close(torch.tensor(pd.read_csv(d / 'rel.csv').score.values, dtype=torch.float32), ref, atol=1e-6, rtol=0)
    (hub.parent / 'qualiclip.pth.sha256').write_text('0' * 64)                     # a different file than the one recorded
    rc, _, err = _score(files[0], '--weights', 'released', '--out', d / 'rel2.csv')
    assert rc == 2 and 'does not match' in err


def test_niqe_and_clipiqa_metrics(demo):
    d, ck, files, ref = demo
    from qualiclip.niqe import fit_niqe, save_niqe_params
    npz = save_niqe_params(fit_niqe(write_demo_photos(d / 'pristine', 'val'), progress=False), d / 'niqe.npz')
    for model, opt in (('niqe', ['--niqe-params', npz]), ('clipiqa', ['--weights', ck])):
        rc, _, err = _score(*files, '--model', model, *opt, '--device', 'cpu', '--out', d / f'{model}.csv')
        assert rc == 0, err
        want = torch.tensor(pd.read_csv(d / f'{model}.csv').score.values, dtype=torch.float32)
        kw = {'niqe_params': str(npz)} if model == 'niqe' else {'weights': str(ck)}
        m = qualiclip.create_metric(model, device='cpu', **kw)
        torch.testing.assert_close(m([str(f) for f in files]), want, atol=1e-6, rtol=0)
        assert m.lower_better == (model == 'niqe')
    with pytest.raises(ValueError, match='niqe is not differentiable'): qualiclip.create_metric('niqe', niqe_params=str(npz), as_loss=True)


def test_models_command_and_list_models():
    lines = qualiclip.list_models()
    assert [l.split()[0] for l in lines] == qualiclip.list_models(names_only=True) == ['qualiclip', 'clipiqa', 'niqe', 'qualiclip+']
    assert 'lower is better' in lines[2] and 'niqe_params' in lines[2] and 'higher is better' in lines[0] and 'prompts' in lines[3]
    out = io.StringIO()
    with contextlib.redirect_stdout(out): assert cli.main(['models']) == 0
    assert out.getvalue().splitlines() == lines


def test_weights_released_in_evaluate_and_fit_prompts(demo, hub, capsys):
    "`--weights released` means the same in evaluate and fit-prompts: offline, one line naming the URL, nothing written."
    d, ck, files, ref = demo
    rc = cli.main(['evaluate', 'demo', str(d / 'demo'), '--weights', 'released', '--out', str(d / 'ev')])
    err = capsys.readouterr().err
    assert rc == 2 and RELEASED_URL in err and not (d / 'ev').exists(), err
    rc = cli.main(['fit-prompts', '--weights', 'released', '--dataset', 'demo', '--root', str(d / 'demo'), '--out', str(d / 'p.pth')])
    err = capsys.readouterr().err
    assert rc == 2 and RELEASED_URL in err and len([l for l in err.splitlines() if 'error' in l]) == 1, err
    assert not (d / 'p.pth').exists()
