"""Bad weights files on the command line: one clear error naming the file, exit code 2, and no pickle ever executed."""
import os, pickle
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from PIL import Image
from qualiclip.cli import main
from qualiclip.core import demo_photo
from qualiclip.model import TINY_CONFIG, random_official_checkpoint


class _Marker:
    "Unpickling this would create a marker file."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (Path.touch, (Path(self.path),))


@pytest.fixture
def files(tmp_path):
    img = tmp_path / 'img.png'; Image.fromarray(demo_photo('chelsea')).save(img)
    (tmp_path / 'textfile.pt').write_text('these are not weights\n')
    marker = tmp_path / 'MARKER'
    with open(tmp_path / 'evil.pt', 'wb') as f:
        pickle.dump({'visual.conv1.weight': _Marker(marker), 'clip_model.x': _Marker(marker), 'prompts_features': _Marker(marker)}, f)
    torch.save({'clip_model.x': torch.zeros(1), 'prompts_features': _Marker(marker)}, tmp_path / 'evil_zip.pth')   # torch.save's zip format
    return tmp_path, img, marker


def _run(capsys, *args):
    rc = main(['score', *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize('name', ['textfile.pt', 'evil.pt', 'evil_zip.pth'])
def test_pretrained_bad_file(files, capsys, name):
    d, img, marker = files
    rc, err = _run(capsys, '--pretrained', d / name, '--backbone', TINY_CONFIG, img, '--out', d / 'scores.csv')
    assert rc == 2, err
    assert f"{d / name} cannot be read as CLIP weights" in err, err
    assert 'TorchScript archive' in err and 'state dict' in err and 'Traceback' not in err, err
    assert not marker.exists() and not (d / 'scores.csv').exists()


@pytest.mark.parametrize('name', ['textfile.pt', 'evil.pt', 'evil_zip.pth'])
def test_weights_bad_file(files, capsys, name):
    d, img, marker = files
    rc, err = _run(capsys, '--weights', d / name, img, '--out', d / 'scores.csv')
    assert rc == 2, err
    assert f"{d / name} cannot be read as a QualiCLIP checkpoint" in err and 'official layout' in err, err
    assert 'weights_only` set to `False' not in err and 'Traceback' not in err, err
    assert not marker.exists()


def test_evil_pickle_message(files, capsys):
    d, img, marker = files
    rc, err = _run(capsys, '--pretrained', d / 'evil.pt', '--backbone', TINY_CONFIG, img, '--out', d / 'scores.csv')
    assert rc == 2 and 'never unpickled' in err, err
    assert not marker.exists()


def test_good_files_still_load(files, capsys):
    "The same command with a real (random, tiny) state dict and checkpoint scores the image."
    d, img, _ = files
    ck = random_official_checkpoint(d / 'tiny.pth', TINY_CONFIG, seed=0)
    sd = {k[len('clip_model.'):]: v for k, v in torch.load(ck, weights_only=True).items() if k.startswith('clip_model.')}
    torch.save(sd, d / 'clip.pt')
    rc, err = _run(capsys, '--pretrained', d / 'clip.pt', '--backbone', TINY_CONFIG, img, '--out', d / 'a.csv', '--device', 'cpu')
    assert rc == 0, err
    rc, err = _run(capsys, '--weights', ck, img, '--out', d / 'b.csv', '--device', 'cpu')
    assert rc == 0, err
