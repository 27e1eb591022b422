"""`qualiclip score` against an independent, purely functional implementation of the released inference procedure.

The reference below reads the checkpoint file itself and uses only torch.nn.functional: the ModifiedResNet trunk
(3-conv stem, anti-aliased bottlenecks), the attention pool over all tokens without positional embedding (query
token kept), `100 * cos` with the stored prompt features, softmax per pair, mean of the positive probabilities.
"""
import math, os, time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qualiclip.core import demo_photo
from qualiclip.model import DEFAULT_BACKBONE, TINY_CONFIG, WeightsUnavailableError, create_clip, random_official_checkpoint

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'], sd[f'{p}.bias'], False, 0.0, 1e-5)


def _bottleneck(x, sd, p, stride):
    out = F.relu(_bn(F.conv2d(x, sd[f'{p}.conv1.weight']), sd, f'{p}.bn1'))
    out = F.relu(_bn(F.conv2d(out, sd[f'{p}.conv2.weight'], padding=1), sd, f'{p}.bn2'))
    if stride > 1: out = F.avg_pool2d(out, stride)
    out = _bn(F.conv2d(out, sd[f'{p}.conv3.weight']), sd, f'{p}.bn3')
    idt = x
    if f'{p}.downsample.0.weight' in sd:
        if stride > 1: idt = F.avg_pool2d(idt, stride)
        idt = _bn(F.conv2d(idt, sd[f'{p}.downsample.0.weight']), sd, f'{p}.downsample.1')
    return F.relu(out + idt)


def reference_score(sd, img):
    "Official procedure on one (H,W,3) uint8 image, from the raw official-layout state dict."
    v = {k[len('clip_model.visual.'):]: t.float() for k, t in sd.items() if k.startswith('clip_model.visual.')}
    x = (torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    x = F.relu(_bn(F.conv2d(x, v['conv1.weight'], stride=2, padding=1), v, 'bn1'))
    x = F.relu(_bn(F.conv2d(x, v['conv2.weight'], padding=1), v, 'bn2'))
    x = F.relu(_bn(F.conv2d(x, v['conv3.weight'], padding=1), v, 'bn3'))
    x = F.avg_pool2d(x, 2)
    for layer in range(1, 5):
        nblocks = len({k.split('.')[1] for k in v if k.startswith(f'layer{layer}.')})
        for b in range(nblocks): x = _bottleneck(x, v, f'layer{layer}.{b}', 2 if (layer > 1 and b == 0) else 1)
    tok = x[0].flatten(1).T
    tok = torch.cat([tok.mean(0, keepdim=True), tok])
    C = tok.shape[1]; heads = C // 64; d = C // heads
    proj = lambda n: tok @ v[f'attnpool.{n}_proj.weight'].T + v[f'attnpool.{n}_proj.bias']
    Q, K, V = [proj(n).view(-1, heads, d).transpose(0, 1) for n in 'qkv']
    att = torch.softmax(Q @ K.transpose(1, 2) / math.sqrt(d), dim=-1)
    out = (att @ V).transpose(0, 1).reshape(-1, C) @ v['attnpool.c_proj.weight'].T + v['attnpool.c_proj.bias']
    f = out[0] / out[0].norm()
    logits = (100 * f @ sd['prompts_features'].float().T).view(-1, 2)
    return torch.softmax(logits, dim=-1)[:, 0].mean().item()


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp('photos')
    Image.fromarray(demo_photo('chelsea')).save(d / 'chelsea.png')              # 451x300 colour
    Image.fromarray(demo_photo('camera')[..., 0]).save(d / 'camera_gray.png')   # 512x512 grayscale (mode L)
    Image.fromarray(demo_photo('coffee')[:333, :517]).save(d / 'coffee_odd.png')  # odd size 517x333
    return d


def test_cli_score_matches_reference(photos, tmp_path):
    from qualiclip.cli import main
    ck = random_official_checkpoint(tmp_path / 'tiny.pth', TINY_CONFIG, seed=5)
    sd = torch.load(ck, weights_only=True, map_location='cpu')
    out = tmp_path / 'scores.csv'
    assert main(['score', str(photos), '--weights', str(ck), '--out', str(out), '--batch-size', '2']) == 0
    df = pd.read_csv(out)
    assert list(df.columns)[:5] == ['path', 'score', 'width', 'height', 'error']
    assert len(df) == 3 and df.error.isna().all()
    for _, row in df.iterrows():
        img = np.asarray(Image.open(row.path).convert('RGB'))
        assert (row.width, row.height) == (img.shape[1], img.shape[0])
        assert abs(row.score - reference_score(sd, img)) < 1e-5, row.path
    assert df.score.max() - df.score.min() > 5e-3  # distinct scores: the comparison can fail


def test_pretrained_openai_offline_fails_fast(tmp_path, monkeypatch):
    from qualiclip.model import _network_up
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)  # exercise the network probe too
    if _network_up(): pytest.skip('the Hugging Face hub is reachable here: this test must not download')
    t0 = time.time()
    with pytest.raises(WeightsUnavailableError, match='--pretrained /path/to/RN50.pt'):
        create_clip(DEFAULT_BACKBONE, 'openai', cache_dir=str(tmp_path))
    assert time.time() - t0 < 10
