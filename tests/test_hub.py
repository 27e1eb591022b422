"""hubconf.py: torch.hub.load(repo, 'QualiCLIP', ...) on a tiny random checkpoint, and `pretrained=True` without network."""
import os, shutil, socket, time
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from qualiclip.core import demo_photo, sha256sum
from qualiclip.model import (CLIP_MEAN, CLIP_STD, TINY_CONFIG, QualiCLIP, WeightsUnavailableError,
                             infer_config, random_official_checkpoint, read_official)

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return random_official_checkpoint(tmp_path_factory.mktemp('hub') / 'tiny.pth', TINY_CONFIG, seed=3)


def _batch():
    "Two real photos of one size, in [0,1], and the same normalised with CLIP's mean/std."
    a = torch.from_numpy(demo_photo('chelsea')).permute(2, 0, 1).float() / 255
    b = torch.from_numpy(demo_photo('coffee')).permute(2, 0, 1).float()[:, :a.shape[1], :a.shape[2]] / 255
    x = torch.stack([a, b])
    return x, (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def test_infer_config_tiny(ckpt):
    sd, _ = read_official(ckpt)
    name, cfg = infer_config(sd, ckpt)
    assert name == TINY_CONFIG and cfg['vision_cfg']['layers'] == [1, 1, 1, 1]


def test_weights_entry_equals_from_checkpoint(ckpt):
    model = torch.hub.load(REPO, 'QualiCLIP', source='local', weights=str(ckpt))
    x, xn = _batch()
    with torch.no_grad(): got = model(xn)
    ref = QualiCLIP.from_checkpoint(ckpt).score_batch(x)
    assert got.shape == (2,) and ((got >= 0) & (got <= 1)).all()
    assert (got - ref).abs().max().item() <= 1e-6, (got, ref)
    assert (ref[0] - ref[1]).abs() > 1e-4   # two photos, two scores: the comparison can fail
    assert isinstance(model.model, QualiCLIP) and not model.training


def test_run_entry(ckpt, tmp_path):
    run = tmp_path / 'run'; run.mkdir(); shutil.copy(ckpt, run / 'qualiclip.pth')
    x, xn = _batch()
    a = torch.hub.load(REPO, 'QualiCLIP_run', source='local', run=str(run))
    b = torch.hub.load(REPO, 'QualiCLIP', source='local', weights=str(ckpt))
    assert torch.equal(a(xn), b(xn))
    with pytest.raises(FileNotFoundError, match='no trained checkpoint'):
        torch.hub.load(REPO, 'QualiCLIP_run', source='local', run=str(tmp_path / 'nothing'))


def test_pretrained_uses_cached_release(ckpt, tmp_path, monkeypatch):
    "A released file already in torch.hub's cache loads offline, and a digest mismatch is refused."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    d = Path(torch.hub.get_dir()) / 'checkpoints'; d.mkdir(parents=True)
    shutil.copy(ckpt, d / 'qualiclip.pth'); (d / 'qualiclip.pth.sha256').write_text(sha256sum(ckpt))
    x, xn = _batch()
    model = torch.hub.load(REPO, 'QualiCLIP', source='local')
    assert (model(xn) - QualiCLIP.from_checkpoint(ckpt).score_batch(x)).abs().max() <= 1e-6
    (d / 'qualiclip.pth.sha256').write_text('f' * 64)
    with pytest.raises(ValueError, match='does not match'):
        torch.hub.load(REPO, 'QualiCLIP', source='local')


def _expect_fast_failure(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError) as e:
        torch.hub.load(REPO, 'QualiCLIP', source='local')
    took = time.time() - t0
    msg = str(e.value)
    assert "weights='/path/to/qualiclip.pth'" in msg and 'releases/download/weights/qualiclip.pth' in msg, msg
    assert took < 1.6, took
    assert not (Path(tmp_path) / 'hub' / 'checkpoints' / 'qualiclip.pth').exists()


def test_pretrained_offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    _expect_fast_failure(tmp_path, monkeypatch)


def test_pretrained_network_blocked(tmp_path, monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    for v in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'): monkeypatch.delenv(v, raising=False)
    def refuse(*a, **k): raise OSError('network is blocked in this test')
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    _expect_fast_failure(tmp_path, monkeypatch)


def test_pretrained_bad_proxy(tmp_path, monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('no_proxy', raising=False); monkeypatch.delenv('NO_PROXY', raising=False)
    for v in ('https_proxy', 'HTTPS_PROXY'): monkeypatch.setenv(v, 'http://127.0.0.1:9')   # nothing listens on port 9
    _expect_fast_failure(tmp_path, monkeypatch)


def test_plus_entry(ckpt, tmp_path):
    "QualiCLIP+ through the hub: the same scores as the library's scorer with the same checkpoint and prompts file."
    from qualiclip.prompts import QualiCLIPPlus, qualiclip_plus_scorer
    pr = QualiCLIPPlus.from_checkpoint(ckpt).save_prompts(tmp_path / 'prompts.pth')
    x, xn = _batch()
    model = torch.hub.load(REPO, 'QualiCLIP_plus', source='local', prompts=str(pr), weights=str(ckpt))
    ref = qualiclip_plus_scorer(weights=str(ckpt), prompts=str(pr), device='cpu').score_batch(x)
    got = model(xn)
    assert (got - ref).abs().max().item() <= 1e-6, (got, ref)
    assert (got - QualiCLIP.from_checkpoint(ckpt).score_batch(x)).abs().max() > 1e-4   # not the plain model's scores
    with pytest.raises(FileNotFoundError, match='no such prompts file'):
        torch.hub.load(REPO, 'QualiCLIP_plus', source='local', prompts=str(tmp_path / 'none.pth'), weights=str(ckpt))
