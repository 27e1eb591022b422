"Dataset registry: every miniature end to end, splits, downloads from file:// URLs, archives and bad inputs."
import io, json, os, tarfile, time, zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from qualiclip.datasets import (DATASETS, ArchiveError, ChecksumError, DatasetError, DownloadError, LOCK_NAME,
                                download, fetch, load_dataset, make_splits, miniature, miniature_sources,
                                safe_extract, sha256sum, verify)

NAMES = [k for k in DATASETS if k != 'demo']
ROWS = {'koniq10k': 6, 'clive': 6, 'flive': 6, 'spaq': 6, 'live': 12, 'csiq': 12, 'tid2013': 12, 'kadid10k': 12,
        'agiqa3k': 6, 'pipal': 12, 'kadis700k': 6}
SYNTHETIC = {'live', 'csiq', 'tid2013', 'kadid10k', 'pipal'}


@pytest.fixture(scope='module')
def minis(tmp_path_factory):
    "One miniature per dataset, built once."
    base = tmp_path_factory.mktemp('minis')
    return {k: miniature(k, base/k, n=6, seed=0) for k in NAMES}


@pytest.mark.parametrize('name', NAMES)
def test_miniature_loads(minis, name):
    df = load_dataset(name, minis[name])
    assert len(df) == ROWS[name]
    assert df.image.is_unique and all(Path(p).is_file() for p in df.path)
    assert (df.higher_better == DATASETS[name].higher_better).all()
    assert not df.image.str.contains('_patch_').any()
    assert not df.image.str.contains(r'(?:^|/)t[1-7]\.bmp$').any()
    if name in SYNTHETIC:
        assert df.ref.notna().all() and all((minis[name]/r).is_file() for r in df.ref)
        assert not set(df.image) & set(df.ref)          # references are not scored rows
    s = make_splits(df, n=10, seed=0)
    for i in range(10):
        parts = [set(s.image[s[f'split_{i}'] == p]) for p in ('train', 'val', 'test')]
        assert sum(map(len, parts)) == len(df) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        if name in SYNTHETIC: assert s.groupby('ref')[f'split_{i}'].nunique().max() == 1
    assert make_splits(df, n=10, seed=0).equals(s)


def test_split_proportions():
    df = pd.DataFrame({'image': [f'{i}.png' for i in range(1000)]})
    s = make_splits(df, n=10, seed=3)
    for i in range(10): assert s[f'split_{i}'].value_counts().to_dict() == {'train': 700, 'test': 200, 'val': 100}
    refs = pd.DataFrame({'image': [f'{r}_{k}.png' for r in range(81) for k in range(125)], 'ref': np.repeat(np.arange(81), 125)})
    s = make_splits(refs, n=10, seed=0)
    fr = s.split_0.value_counts(normalize=True)
    assert abs(fr['train'] - .7) < .02 and abs(fr['val'] - .1) < .02 and abs(fr['test'] - .2) < .02
    assert s.groupby('ref').split_0.nunique().max() == 1
    assert not s.split_0.equals(make_splits(refs, n=1, seed=1).split_0)


def test_miniature_refuses_nonempty(tmp_path):
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'f').write_text('1')
    with pytest.raises(DatasetError, match='not empty'): miniature('clive', tmp_path/'x')


# ---------------------------------------------------------------- downloads on file:// URLs
@pytest.mark.parametrize('name', ['koniq10k', 'clive', 'live', 'kadid10k', 'flive'])
def test_download_from_file_urls(minis, tmp_path, name):
    src = miniature_sources(name, minis[name], tmp_path/'src')
    urls = {fn: p.resolve().as_uri() for fn, p in src.items()}
    root = tmp_path/'root'
    download(name, root, progress=False, urls=urls)
    got, want = load_dataset(name, root), load_dataset(name, minis[name])
    pd.testing.assert_frame_equal(got.drop(columns='path'), want.drop(columns='path'))
    lock = json.loads((root/LOCK_NAME).read_text())
    assert lock['sha256'] == {fn: sha256sum(p) for fn, p in src.items()}
    assert not list(root.glob('.extract-*')) and not list(root.glob('*.part'))
    # a second run fetches nothing and unpacks nothing
    for p in src.values(): p.unlink()
    mtimes = {p: p.stat().st_mtime for p in root.rglob('*') if p.is_file()}
    download(name, root, progress=False, urls=urls)
    assert {p: p.stat().st_mtime for p in root.rglob('*') if p.is_file()} == mtimes


def test_download_recorded_checksum_is_verified(minis, tmp_path):
    "A source file that is no archive keeps the checksum recorded at its first download; a changed file is refused."
    src = miniature_sources('koniq10k', minis['koniq10k'], tmp_path/'src')
    urls = {fn: p.as_uri() for fn, p in src.items()}
    root = tmp_path/'root'; root.mkdir()
    (root/LOCK_NAME).write_text(json.dumps({'sha256': {'koniq10k_distributions_sets.csv': '0'*64}, 'extracted': {}}))
    with pytest.raises(ChecksumError, match='recorded'): download('koniq10k', root, progress=False, urls=urls)


def test_truncated_archive_is_never_recorded(minis, tmp_path):
    "A truncated download fails naming the file and records nothing, so the good archive fetched next is accepted."
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    good = src['kadid10k.zip']; cut = tmp_path/'cut'/'kadid10k.zip'; cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    root = tmp_path/'root'
    with pytest.raises(ArchiveError, match='damaged or incomplete') as e:
        download('kadid10k', root, progress=False, urls={'kadid10k.zip': cut.as_uri()})
    assert str(root/'kadid10k.zip') in str(e.value)
    lock = json.loads((root/LOCK_NAME).read_text()) if (root/LOCK_NAME).exists() else {'sha256': {}}
    assert 'kadid10k.zip' not in lock['sha256']
    (root/'kadid10k.zip').unlink()                                   # what the message says to do
    download('kadid10k', root, progress=False, urls={'kadid10k.zip': good.as_uri()})
    assert len(load_dataset('kadid10k', root)) == 12
    # a lock written by an earlier version (checksum of a truncated archive recorded, never unpacked) no longer blocks
    root2 = tmp_path/'root2'; root2.mkdir()
    (root2/LOCK_NAME).write_text(json.dumps({'sha256': {'kadid10k.zip': sha256sum(cut)}, 'extracted': {}}))
    download('kadid10k', root2, progress=False, urls={'kadid10k.zip': good.as_uri()})
    assert json.loads((root2/LOCK_NAME).read_text())['sha256']['kadid10k.zip'] == sha256sum(good)


@pytest.mark.parametrize('value', ['nan', 'inf', 'abc'])
def test_bad_mos_names_the_image(minis, tmp_path, value):
    "A MOS that is NaN, infinite or text fails when the dataset is read, naming the image and the value."
    import shutil
    root = tmp_path/'clive'; shutil.copytree(minis['clive'], root)
    good = load_dataset('clive', root)
    from qualiclip.pipeline import write_index, read_index
    write_index('clive', root, tmp_path/'index.csv')
    idx = pd.read_csv(tmp_path/'index.csv'); idx['mos'] = idx['mos'].astype(object); idx.loc[1, 'mos'] = value
    idx.to_csv(tmp_path/'index.csv', index=False)
    with pytest.raises(DatasetError, match='not a finite number') as e: read_index(tmp_path/'index.csv')
    assert good.image[1] in str(e.value) and str(tmp_path/'index.csv') in str(e.value)


def test_download_pinned_checksum_mismatch(minis, tmp_path):
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    with pytest.raises(ChecksumError, match='checksum mismatch'):
        download('kadid10k', tmp_path/'root', progress=False, urls={'kadid10k.zip': src['kadid10k.zip'].as_uri()},
                 checksums={'kadid10k.zip': 'f'*64})
    assert not list((tmp_path/'root').iterdir()) or [p.name for p in (tmp_path/'root').iterdir()] == []
    ok = sha256sum(src['kadid10k.zip'])
    download('kadid10k', tmp_path/'root', progress=False, urls={'kadid10k.zip': src['kadid10k.zip'].as_uri()},
             checksums={'kadid10k.zip': ok})
    assert len(load_dataset('kadid10k', tmp_path/'root')) == 12


def test_fetch_resumes(tmp_path):
    data = os.urandom(300_000); (tmp_path/'src.bin').write_bytes(data)
    sha = __import__('hashlib').sha256(data).hexdigest()
    (tmp_path/'out.bin.part').write_bytes(data[:123_456])                 # an interrupted download
    fetch((tmp_path/'src.bin').as_uri(), tmp_path/'out.bin', sha256=sha, progress=False, chunk=10_000)
    assert (tmp_path/'out.bin').read_bytes() == data and not (tmp_path/'out.bin.part').exists()
    # resuming really appends: a corrupt partial file is kept as the prefix, caught by the checksum, and removed
    (tmp_path/'bad.bin.part').write_bytes(b'x'*1000)
    with pytest.raises(ChecksumError): fetch(str(tmp_path/'src.bin'), tmp_path/'bad.bin', sha256=sha, progress=False)
    assert not (tmp_path/'bad.bin.part').exists() and not (tmp_path/'bad.bin').exists()
    fetch(str(tmp_path/'src.bin'), tmp_path/'bad.bin', sha256=sha, progress=False)
    assert (tmp_path/'bad.bin').read_bytes() == data


def test_offline_errors_are_clear_and_fast(tmp_path):
    t = time.time()
    with pytest.raises(DownloadError) as e:
        download('koniq10k', tmp_path/'k', progress=False, timeout=5,
                 urls={'koniq10k_1024x768.zip': (tmp_path/'absent.zip').as_uri(),
                       'koniq10k_scores_and_distributions.zip': 'http://127.0.0.1:9/x.zip',
                       'koniq10k_distributions_sets.csv': 'http://127.0.0.1:9/sets.csv'})
    msg = str(e.value)
    assert '3 file(s) could not be fetched' in msg and 'koniq10k_1024x768/1024x768/<image_name>.jpg' in msg
    assert str(tmp_path/'k') in msg and 'koniq10k_distributions_sets.csv' in msg
    assert time.time() - t < 10
    with pytest.raises(DownloadError, match='no direct public link'): download('spaq', tmp_path/'s', progress=False)


def test_manually_placed_files_are_used(minis, tmp_path):
    src = miniature_sources('spaq', minis['spaq'], tmp_path/'src')
    root = tmp_path/'root'; root.mkdir()
    for fn, p in src.items(): (root/fn).write_bytes(p.read_bytes())
    download('spaq', root, progress=False)
    assert verify('spaq', root)['ok']


# ---------------------------------------------------------------- archives
def test_truncated_archives_leave_nothing(minis, tmp_path):
    src = miniature_sources('live', minis['live'], tmp_path/'src')
    z = src['databaserelease2.zip']; b = z.read_bytes()
    (tmp_path/'cut.zip').write_bytes(b[:len(b)//2])
    with pytest.raises(ArchiveError, match='damaged or incomplete'): safe_extract(tmp_path/'cut.zip', tmp_path/'out')
    assert list((tmp_path/'out').iterdir()) == []
    with tarfile.open(tmp_path/'a.tar.gz', 'w:gz') as t: t.add(minis['live']/'databaserelease2', 'databaserelease2')
    b = (tmp_path/'a.tar.gz').read_bytes(); (tmp_path/'cut.tar.gz').write_bytes(b[:len(b)*2//3])
    with pytest.raises(ArchiveError, match='damaged or incomplete'): safe_extract(tmp_path/'cut.tar.gz', tmp_path/'out')
    assert list((tmp_path/'out').iterdir()) == []
    # through download: a truncated source with a pinned checksum never gets unpacked
    (tmp_path/'srv').mkdir(); (tmp_path/'srv'/'databaserelease2.zip').write_bytes(z.read_bytes()[:5000])
    with pytest.raises(ChecksumError):
        download('live', tmp_path/'root', progress=False, urls={'databaserelease2.zip': (tmp_path/'srv'/'databaserelease2.zip').as_uri()},
                 checksums={'databaserelease2.zip': sha256sum(z)})
    # without a checksum: the extraction error, nothing half-written
    with pytest.raises(ArchiveError):
        download('live', tmp_path/'root2', progress=False, urls={'databaserelease2.zip': (tmp_path/'srv'/'databaserelease2.zip').as_uri()})
    assert sorted(p.name for p in (tmp_path/'root2').iterdir()) == ['databaserelease2.zip']   # its checksum is not recorded


def _tar_with(path, name, data=b'x', **kw):
    with tarfile.open(path, 'w') as t:
        ok = tarfile.TarInfo('ok.txt'); ok.size = 1; t.addfile(ok, io.BytesIO(b'1'))
        info = tarfile.TarInfo(name)
        for k, v in kw.items(): setattr(info, k, v)
        info.size = len(data) if info.type == tarfile.REGTYPE else 0
        t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


@pytest.mark.parametrize('name,kw,msg', [
    ('../escape.txt', {}, 'outside the target folder'),
    ('a/../../escape.txt', {}, 'outside the target folder'),
    ('/abs/escape.txt', {}, 'absolute path'),
    ('link', {'type': tarfile.SYMTYPE, 'linkname': '../../etc/passwd'}, 'outside the target folder'),
    ('link', {'type': tarfile.SYMTYPE, 'linkname': '/etc/passwd'}, 'absolute'),
    ('hard', {'type': tarfile.LNKTYPE, 'linkname': '../x'}, 'outside the target folder'),
    ('dev', {'type': tarfile.CHRTYPE}, 'device or special'),
])
def test_hostile_tar_refused(tmp_path, name, kw, msg):
    _tar_with(tmp_path/'h.tar', name, **kw)
    (tmp_path/'out').mkdir()
    with pytest.raises(ArchiveError, match=msg): safe_extract(tmp_path/'h.tar', tmp_path/'out')
    assert list((tmp_path/'out').iterdir()) == [] and not (tmp_path/'escape.txt').exists()


def test_hostile_zip_refused(tmp_path):
    for member, msg in [('../escape.txt', 'outside'), ('/abs.txt', 'absolute'), ('C:/win.txt', 'absolute')]:
        with zipfile.ZipFile(tmp_path/'h.zip', 'w') as z: z.writestr('ok.txt', '1'); z.writestr(member, 'x')
        with pytest.raises(ArchiveError, match=msg): safe_extract(tmp_path/'h.zip', tmp_path/'out')
        assert list((tmp_path/'out').iterdir()) == []
    with zipfile.ZipFile(tmp_path/'l.zip', 'w') as z:
        info = zipfile.ZipInfo('lnk'); info.external_attr = (0o120777 << 16); z.writestr(info, '../../outside')
    with pytest.raises(ArchiveError, match='outside'): safe_extract(tmp_path/'l.zip', tmp_path/'out')
    with pytest.raises(ArchiveError, match='RAR'): safe_extract(tmp_path/'x.rar', tmp_path/'out')


def test_hostile_archive_through_download(tmp_path):
    with zipfile.ZipFile(tmp_path/'kadid10k.zip', 'w') as z: z.writestr('kadid10k/dmos.csv', 'a'); z.writestr('../../evil.txt', 'x')
    with pytest.raises(ArchiveError, match='outside'):
        download('kadid10k', tmp_path/'root', progress=False, urls={'kadid10k.zip': (tmp_path/'kadid10k.zip').as_uri()})
    assert not (tmp_path/'evil.txt').exists() and not (tmp_path/'root'/'kadid10k').exists()


def test_prepare_cli(minis, tmp_path):
    import subprocess, sys
    exe = Path(sys.executable).parent/'qualiclip'
    if not exe.exists(): pytest.skip('console script not installed')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    ok = subprocess.run([str(exe), 'prepare', 'csiq', str(minis['csiq'])], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and '12 of 12 images present' in ok.stdout and 'lower is better' in ok.stdout
    bad = subprocess.run([str(exe), 'prepare', 'tid2013', str(minis['csiq'])], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and 'mos_with_names.txt not found' in bad.stderr and 'distorted_images/i01_01_1.bmp' in bad.stderr


def test_prepare_download_with_pinned_checksums_file(minis, tmp_path, capsys, monkeypatch):
    from qualiclip import datasets as D
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    spec = D.DATASETS['kadid10k']
    monkeypatch.setattr(spec, 'sources', [('kadid10k.zip', src['kadid10k.zip'].as_uri(), None)])
    (tmp_path/'bad.yaml').write_text(f"kadid10k.zip: '{'0'*64}'\n")
    assert D.prepare_cmd('kadid10k', str(tmp_path/'r1'), download=True, checksums=str(tmp_path/'bad.yaml')) == 1
    assert 'checksum mismatch' in capsys.readouterr().err
    (tmp_path/'ok.yaml').write_text(f"kadid10k.zip: {sha256sum(src['kadid10k.zip'])}\n")
    assert D.prepare_cmd('kadid10k', str(tmp_path/'r2'), download=True, checksums=str(tmp_path/'ok.yaml')) == 0
    assert '12 of 12 images present' in capsys.readouterr().out


def test_prepare_download_fetches_the_authors_splits_and_survives_without_them(minis, tmp_path, capsys, monkeypatch):
    "prepare --download also fetches the authors' split files; when they cannot be fetched the dataset is still prepared, and says so."
    from qualiclip import datasets as D
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    monkeypatch.setattr(D.DATASETS['kadid10k'], 'sources', [('kadid10k.zip', src['kadid10k.zip'].as_uri(), None)])
    calls = []
    def offline(name, root, base_url=None, progress=False):
        calls.append((name, Path(root))); raise D.DownloadError("Could not fetch https://example/train.npy (offline).")
    monkeypatch.setattr(D, 'fetch_author_splits', offline)
    assert D.prepare_cmd('kadid10k', str(tmp_path/'r1'), download=True) == 0
    out = capsys.readouterr()
    assert calls == [('kadid10k', tmp_path/'r1')] and '12 of 12 images present' in out.out
    assert "the authors' split files were not fetched (Could not fetch" in out.err and 'T1 uses seeded splits for kadid10k' in out.err
    assert D.prepare_cmd('kadid10k', str(tmp_path/'r2'), download=True, splits=False) == 0 and len(calls) == 1   # --no-splits
    assert D.prepare_cmd('kadid10k', str(minis['kadid10k'])) == 0 and len(calls) == 1        # without --download: nothing fetched


def test_download_keeps_a_dataset_already_in_place(minis, tmp_path):
    # TID2013 ships as RAR: once unpacked by hand, download() is a no-op and fetches nothing
    assert download('tid2013', minis['tid2013'], progress=False, urls={'tid2013.rar': 'http://127.0.0.1:9/tid2013.rar'}) == minis['tid2013']
    assert not (minis['tid2013']/LOCK_NAME).exists()
    (tmp_path/'tid2013.rar').write_bytes(b'Rar!\x1a\x07\x00')
    with pytest.raises(ArchiveError, match='unpack it by hand'):
        download('tid2013', tmp_path/'t', progress=False, urls={'tid2013.rar': (tmp_path/'tid2013.rar').as_uri()})


def test_fetch_over_http_restarts_when_range_is_ignored(tmp_path):
    # python's http.server ignores Range and answers 200: the stale partial file must be replaced, not appended to
    import functools, hashlib, http.server, threading
    data = os.urandom(50_000); (tmp_path/'srv').mkdir(); (tmp_path/'srv'/'f.zip').write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path/'srv'))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{srv.server_address[1]}/f.zip'
        (tmp_path/'f.zip.part').write_bytes(b'junk' * 100)
        fetch(url, tmp_path/'f.zip', sha256=hashlib.sha256(data).hexdigest(), progress=False)
        assert (tmp_path/'f.zip').read_bytes() == data
        with pytest.raises(DownloadError, match='404'): fetch(url + 'x', tmp_path/'g.zip', progress=False)
    finally:
        srv.shutdown(); srv.server_close()


def test_csiq_flat_repackaged_layout(tmp_path):
    import shutil
    r = miniature('csiq', tmp_path/'c', seed=2); want = load_dataset('csiq', r)
    (r/'dst_imgs_all').mkdir()
    for p in list((r/'dst_imgs').rglob('*.png')): shutil.move(p, r/'dst_imgs_all'/p.name)
    shutil.rmtree(r/'dst_imgs')
    got = load_dataset('csiq', r)
    assert got.mos.tolist() == want.mos.tolist() and got.image.str.startswith('dst_imgs_all/').all()


def test_delete_archives_after_verification(minis, tmp_path, capsys):
    "With delete_archives the archives this call downloaded are deleted once the dataset verifies; a re-run fetches nothing."
    src = miniature_sources('kadid10k', minis['kadid10k'], tmp_path/'src')
    urls = {fn: p.as_uri() for fn, p in src.items()}
    root = tmp_path/'root'
    download('kadid10k', root, progress=True, urls=urls, delete_archives=True)
    err = capsys.readouterr().err
    assert 'needs 2.5 GB of disk' in err and 'deleted kadid10k.zip' in err, err
    assert not (root/'kadid10k.zip').exists() and len(load_dataset('kadid10k', root)) == 12
    assert json.loads((root/LOCK_NAME).read_text())['extracted']['kadid10k.zip'] == sha256sum(src['kadid10k.zip'])
    download('kadid10k', root, progress=False, urls={'kadid10k.zip': 'http://127.0.0.1:9/gone.zip'})   # nothing to fetch
    # an archive the user put there by hand is never deleted
    root2 = tmp_path/'root2'; root2.mkdir(); (root2/'kadid10k.zip').write_bytes(src['kadid10k.zip'].read_bytes())
    download('kadid10k', root2, progress=False, urls=urls, delete_archives=True)
    assert (root2/'kadid10k.zip').exists()
