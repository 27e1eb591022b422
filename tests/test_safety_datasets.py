"Datasets never replace what the user has: unpacking and downloads write only what is missing, check what they received, and say which file is wrong."
import http.server, io, json, os, subprocess, sys, tarfile, threading, zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io as sio

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from qualiclip import datasets as D
from qualiclip.core import OutputError
from qualiclip.datasets import (ArchiveError, ConflictError, DatasetError, DownloadError, LOCK_NAME, download, fetch,
                                load_dataset, miniature, miniature_sources, safe_extract, sha256sum)

SETS = 'koniq10k_distributions_sets.csv'


@pytest.fixture(scope='module')
def minis(tmp_path_factory):
    base = tmp_path_factory.mktemp('minis')
    return {k: miniature(k, base/k, n=6, seed=0) for k in ('kadid10k', 'koniq10k')}


@pytest.fixture
def server():
    "A local HTTP server: `files[name] = bytes` serves them; `announce[name] = n` sends a wrong Content-Length."
    class Handler(http.server.BaseHTTPRequestHandler):
        files, announce = {}, {}
        def do_GET(self):
            name = self.path.lstrip('/')
            if name not in self.files: self.send_error(404); return
            data = self.files[name]
            self.send_response(200); self.send_header('Content-Length', str(self.announce.get(name, len(data))))
            self.end_headers(); self.wfile.write(data); self.wfile.flush(); self.close_connection = True
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Handler.url = lambda name: f'http://127.0.0.1:{srv.server_address[1]}/{name}'
    try: yield Handler
    finally: srv.shutdown(); srv.server_close()


def _koniq_urls(minis, tmp_path, server):
    src = miniature_sources('koniq10k', minis['koniq10k'], tmp_path/'src')
    for fn, p in src.items(): server.files[fn] = p.read_bytes()
    return src, {fn: server.url(fn) for fn in src}


# ---------------------------------------------------------------- unpacking writes only what is missing
def test_unpacking_keeps_an_edited_file(minis, tmp_path, capsys, monkeypatch):
    "An incomplete dataset whose metadata the user edited: the images are unpacked, the edited file is kept, the clash named (exit 2)."
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    root = tmp_path/'root'; (root/'kadid10k').mkdir(parents=True)
    mine = (minis['kadid10k']/'kadid10k'/'dmos.csv').read_text().replace('\n', '\n#', 1)   # an edited copy
    (root/'kadid10k'/'dmos.csv').write_text(mine)
    urls = {'kadid10k.zip': src['kadid10k.zip'].as_uri()}
    with pytest.raises(ConflictError) as e: download('kadid10k', root, progress=False, urls=urls)
    msg = str(e.value)
    assert str(root/'kadid10k'/'dmos.csv') in msg and "'kadid10k/dmos.csv'" in msg and str(root/'kadid10k.zip') in msg, msg
    assert '.extract-' not in msg and '\n' not in msg
    assert (root/'kadid10k'/'dmos.csv').read_text() == mine                                  # kept
    assert len(list((root/'kadid10k'/'images').glob('*.png'))) == 18                          # the rest unpacked
    assert not [p for p in root.iterdir() if p.name.startswith('.extract-')]
    assert 'kadid10k.zip' not in json.loads((root/LOCK_NAME).read_text())['extracted'] if (root/LOCK_NAME).exists() else True
    # the command line: exit 2 naming both
    (root/'kadid10k'/'images'/'I01.png').unlink()
    monkeypatch.setattr(D.DATASETS['kadid10k'], 'sources', [('kadid10k.zip', urls['kadid10k.zip'], None)])
    assert D.prepare_cmd('kadid10k', str(root), download=True) == 2
    err = capsys.readouterr().err
    assert str(root/'kadid10k'/'dmos.csv') in err and "'kadid10k/dmos.csv'" in err, err
    assert (root/'kadid10k'/'dmos.csv').read_text() == mine and (root/'kadid10k'/'images'/'I01.png').is_file()


def test_unpacking_skips_identical_files(minis, tmp_path):
    "A file already there with the archive's bytes is no clash: the download completes and records the archive."
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    root = tmp_path/'root'; (root/'kadid10k').mkdir(parents=True)
    (root/'kadid10k'/'dmos.csv').write_bytes((minis['kadid10k']/'kadid10k'/'dmos.csv').read_bytes())
    download('kadid10k', root, progress=False, urls={'kadid10k.zip': src['kadid10k.zip'].as_uri()})
    assert len(load_dataset('kadid10k', root)) == 12
    assert json.loads((root/LOCK_NAME).read_text())['extracted']['kadid10k.zip'] == sha256sum(src['kadid10k.zip'])


def test_folder_member_where_the_root_has_a_file(tmp_path):
    "An archive folder where the root holds a file of that name: the file is kept, the other members unpacked, one clear error."
    root = tmp_path/'root'; root.mkdir(); (root/'kadid10k').write_text('my notes')
    z = tmp_path/'kadid10k.zip'
    with zipfile.ZipFile(z, 'w') as f: f.writestr('kadid10k/dmos.csv', 'a,b\n'); f.writestr('readme.txt', 'hello')
    with pytest.raises(ConflictError, match='is a folder where the root has a file') as e: safe_extract(z, root)
    assert str(root/'kadid10k') in str(e.value) and str(z) in str(e.value)
    assert (root/'kadid10k').read_text() == 'my notes' and (root/'readme.txt').read_text() == 'hello'
    assert sorted(p.name for p in root.iterdir()) == ['kadid10k', 'readme.txt']     # no temporary folder left


def test_tar_member_differing_from_a_file_is_kept(tmp_path):
    "The same rule for tar archives and for links."
    root = tmp_path/'root'; root.mkdir(); (root/'a.txt').write_text('mine'); os.symlink('a.txt', root/'ln')
    with tarfile.open(tmp_path/'x.tar', 'w') as t:
        for name, data in (('a.txt', b'theirs'), ('b.txt', b'new')):
            i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
        i = tarfile.TarInfo('ln'); i.type = tarfile.SYMTYPE; i.linkname = 'b.txt'; t.addfile(i)
    with pytest.raises(ConflictError) as e: safe_extract(tmp_path/'x.tar', root)
    assert '2 member(s)' in str(e.value) and str(root/'a.txt') in str(e.value)
    assert (root/'a.txt').read_text() == 'mine' and os.readlink(root/'ln') == 'a.txt' and (root/'b.txt').read_text() == 'new'


# ---------------------------------------------------------------- downloads
def test_fetch_never_replaces_a_file(tmp_path):
    (tmp_path/'src.bin').write_bytes(b'new'); (tmp_path/'dest.bin').write_bytes(b'mine')
    with pytest.raises(ConflictError, match='never replaces') as e:
        fetch((tmp_path/'src.bin').as_uri(), tmp_path/'dest.bin', progress=False)
    assert str(tmp_path/'dest.bin') in str(e.value) and (tmp_path/'dest.bin').read_bytes() == b'mine'


def test_short_read_is_an_error_and_nothing_is_recorded(minis, tmp_path, server):
    "A body shorter than its Content-Length fails naming the URL; nothing lands at the file's place or in the lock."
    src, urls = _koniq_urls(minis, tmp_path, server)
    server.announce[SETS] = len(server.files[SETS]) + 1000
    with pytest.raises(DownloadError) as e: fetch(urls[SETS], tmp_path/'one.csv', progress=False)
    assert urls[SETS] in str(e.value) and 'bytes announced' in str(e.value) and not (tmp_path/'one.csv').exists()
    root = tmp_path/'root'
    with pytest.raises(DownloadError, match='bytes announced') as e: download('koniq10k', root, progress=False, urls=urls)
    assert SETS in str(e.value) and not (root/SETS).exists()
    assert SETS not in json.loads((root/LOCK_NAME).read_text())['sha256']
    del server.announce[SETS]                                     # the server mended: fetched again, recorded
    download('koniq10k', root, progress=False, urls=urls)
    assert (root/SETS).read_bytes() == src[SETS].read_bytes()
    assert json.loads((root/LOCK_NAME).read_text())['sha256'][SETS] == sha256sum(src[SETS])
    assert load_dataset('koniq10k', root).split.notna().all()


def test_invalid_csv_is_never_recorded(minis, tmp_path, server):
    "A CSV that does not parse (here an HTML error page) is not kept and not recorded."
    src, urls = _koniq_urls(minis, tmp_path, server)
    server.files[SETS] = b'<!DOCTYPE html><html><body>Rate limit exceeded</body></html>\n'
    root = tmp_path/'root'
    with pytest.raises(DownloadError, match='no valid CSV file') as e: download('koniq10k', root, progress=False, urls=urls)
    assert urls[SETS] in str(e.value)
    assert not (root/SETS).exists() and SETS not in json.loads((root/LOCK_NAME).read_text())['sha256']


def test_optional_file_is_fetched_again(minis, tmp_path, server):
    "KonIQ's split file, missed once, is fetched by the next run although the dataset already loads without it."
    src, urls = _koniq_urls(minis, tmp_path, server)
    root = tmp_path/'root'
    with pytest.raises(DownloadError, match=SETS): download('koniq10k', root, progress=False, urls={**urls, SETS: server.url('gone.csv')})
    assert load_dataset('koniq10k', root).split.isna().all()      # loads, but without the official split
    download('koniq10k', root, progress=False, urls=urls)
    assert load_dataset('koniq10k', root).split.tolist() == ['train', 'val', 'test']*2


def test_invalid_file_recorded_by_an_earlier_download(minis, tmp_path, server):
    "A broken split file that an earlier version recorded is moved aside and fetched again; one the user put there is kept."
    src, urls = _koniq_urls(minis, tmp_path, server)
    root = tmp_path/'root'; download('koniq10k', root, progress=False, urls=urls)
    junk = bytes(range(256))*4
    (root/SETS).unlink(); (root/SETS).write_bytes(junk)
    lock = json.loads((root/LOCK_NAME).read_text()); lock['sha256'][SETS] = sha256sum(root/SETS)
    (root/LOCK_NAME).write_text(json.dumps(lock))
    download('koniq10k', root, progress=False, urls=urls)
    assert (root/SETS).read_bytes() == src[SETS].read_bytes() and (root/(SETS + '.invalid')).read_bytes() == junk
    root2 = tmp_path/'root2'; download('koniq10k', root2, progress=False, urls=urls)
    (root2/SETS).unlink(); (root2/SETS).write_bytes(junk)        # not recorded: the user's own file
    with pytest.raises(DatasetError, match='not downloaded here') as e: download('koniq10k', root2, progress=False, urls=urls)
    assert str(root2/SETS) in str(e.value) and (root2/SETS).read_bytes() == junk


def test_validation_of_each_file_type(tmp_path):
    sio.savemat(tmp_path/'a.mat', {'x': np.arange(3.)}); b = (tmp_path/'a.mat').read_bytes()
    (tmp_path/'cut.mat').write_bytes(b[:len(b)//2])
    with zipfile.ZipFile(tmp_path/'a.zip', 'w') as z: z.writestr('x.txt', 'x'*5000)
    b = (tmp_path/'a.zip').read_bytes(); (tmp_path/'cut.zip').write_bytes(b[:len(b)//2])
    with tarfile.open(tmp_path/'a.tar.gz', 'w:gz') as t: t.add(tmp_path/'a.mat', 'a.mat')
    b = (tmp_path/'a.tar.gz').read_bytes(); (tmp_path/'cut.tar.gz').write_bytes(b[:len(b)//2])
    (tmp_path/'a.csv').write_text('a,b\n1,2\n'); (tmp_path/'empty.csv').write_bytes(b'')
    for ok in ('a.mat', 'a.zip', 'a.tar.gz', 'a.csv'): assert D._invalid(tmp_path/ok) is None, ok
    for bad in ('cut.mat', 'cut.zip', 'cut.tar.gz', 'empty.csv'): assert D._invalid(tmp_path/bad), bad


# ---------------------------------------------------------------- messages
@pytest.mark.parametrize('name,file,edit', [
    ('kadid10k', 'kadid10k/dmos.csv', lambda s: '\n'.join(
        ','.join('abc' if (i, j) == (2, 2) else x for j, x in enumerate(l.split(','))) for i, l in enumerate(s.split('\n')))),
    ('tid2013', 'mos_with_names.txt', lambda s: 'abc' + s[s.index(' '):]),
    ('pipal', 'Train_Label/A0001.txt', lambda s: s[:s.index(',') + 1] + 'abc\n' + s[s.index('\n') + 1:]),
])
def test_text_score_names_the_file(tmp_path, capsys, name, file, edit):
    "A score that is text fails naming the metadata file, the image and the value (not 'could not convert string to float')."
    root = miniature(name, tmp_path/name, n=2)
    f = root/file; f.write_text(edit(f.read_text()))
    with pytest.raises(DatasetError) as e: load_dataset(name, root)
    msg = str(e.value)
    assert str(f) in msg and "'abc'" in msg and 'not numbers' in msg and 'could not convert' not in msg, msg
    assert D.prepare_cmd(name, str(root)) == 1 and str(f) in capsys.readouterr().err


def test_prepare_demo_into_a_link_to_an_empty_folder(tmp_path, capsys):
    (tmp_path/'empty').mkdir(); os.symlink(tmp_path/'empty', tmp_path/'link')
    assert D.prepare_cmd('demo', str(tmp_path/'link'), size=32) == 0, capsys.readouterr().err
    assert (tmp_path/'link').is_symlink() and (tmp_path/'empty'/'demo_scores.csv').is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'link']


def test_prepare_demo_into_a_file_refused_before_any_work(tmp_path, monkeypatch):
    def boom(*a, **k): raise AssertionError('the demo was built')
    monkeypatch.setattr(D, '_build_demo', boom)
    (tmp_path/'afile').write_text('mine')
    with pytest.raises(OutputError, match='is a file'): D.prepare_cmd('demo', str(tmp_path/'afile'), size=32)
    assert (tmp_path/'afile').read_text() == 'mine'


def test_symbolic_link_loop_is_one_clear_line(tmp_path):
    exe = Path(sys.executable).parent/'qualiclip'
    if not exe.exists(): pytest.skip('console script not installed')
    os.symlink(tmp_path/'loop2', tmp_path/'loop1'); os.symlink(tmp_path/'loop1', tmp_path/'loop2')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    for args in (['demo', 'loop1', '--size', '32'], ['kadid10k', 'loop1', '--download']):
        r = subprocess.run([str(exe), 'prepare', *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and 'leads back to itself' in r.stderr and 'loop1' in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr
    with pytest.raises(OutputError, match='leads back to itself'): download('kadid10k', tmp_path/'loop1', progress=False)


def test_broken_link_in_place_of_a_source(minis, tmp_path):
    "A broken link where a source file goes is named, not followed or replaced."
    root = tmp_path/'root'; root.mkdir(); os.symlink(tmp_path/'gone.zip', root/'kadid10k.zip')
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    with pytest.raises(DatasetError, match='broken symbolic link') as e:
        download('kadid10k', root, progress=False, urls={'kadid10k.zip': src['kadid10k.zip'].as_uri()})
    assert str(root/'kadid10k.zip') in str(e.value) and (root/'kadid10k.zip').is_symlink()
