"""The wheel, as a user gets it: built from the sources, installed without network into a fresh virtual environment
that sees only the scoring dependencies (the wheel's own Requires-Dist, no extra, with what they pull in), then
`qualiclip score` and a three-line Python example run from a folder outside the repository and give the in-repository
scores. The environment links exactly those distributions from this one's site-packages (a full install of torch is
5.5 GB): an extra (seaborn, scipy, dvclive, ...) is absent, so a scoring path that needed one would fail here."""
import ast, csv, importlib.metadata as md, os, re, shutil, subprocess, sys, sysconfig, zipfile
from collections import defaultdict
from email.parser import Parser
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
BASE = {'torch', 'torchvision', 'open-clip-torch', 'pillow', 'numpy', 'pandas', 'tqdm', 'fastcore', 'pyyaml'}
EXTRAS = {'train', 'explore', 'shards', 'onnx', 'docs', 'dev'}
EXTRA_MODULES = ['seaborn', 'scipy', 'matplotlib', 'sklearn', 'skimage', 'kornia', 'pytorch_grad_cam', 'dvclive',
                 'pyarrow', 'webdataset', 'ipywidgets', 'openpyxl', 'tabulate', 'papermill', 'nbdev']
EXAMPLE = """import qualiclip, sys
from qualiclip.core import load_image
print(qualiclip.QualiCLIP.from_checkpoint(sys.argv[1]).score([load_image(p) for p in sys.argv[2:]]).tolist())
"""


def build_wheel(dest:Path, # folder for the sources' copy and the wheel
               ) -> tuple[Path, str]:
    "Build the wheel from a copy of the packaging files and the package (the repository is left as it is); (wheel, build log)."
    src = dest / 'src'; src.mkdir(parents=True)
    for f in ['setup.py', 'settings.ini', 'pyproject.toml', 'README.md', 'LICENSE']: shutil.copy2(REPO / f, src / f)
    shutil.copytree(REPO / 'qualiclip', src / 'qualiclip', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '--no-index', '-v',
                        '-w', str(dest / 'dist')], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list((dest / 'dist').glob('qualiclip-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0], r.stdout + r.stderr


def wheel_metadata(whl:Path, # a built wheel
                  ):
    "The wheel's METADATA as an email.message.Message."
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))
        return Parser().parsestr(z.read(name).decode())


def closure(reqs:list[str], # requirement strings (markers evaluated here, extras followed)
           ) -> dict:
    "canonical name -> installed Distribution, for the requirements and everything they require, transitively."
    seen, done, todo = {}, set(), [Requirement(r) for r in reqs]
    while todo:
        r = todo.pop(); n = canonicalize_name(r.name)
        for e in [''] + sorted(r.extras):
            if (n, e) in done: continue
            done.add((n, e)); d = seen.setdefault(n, md.distribution(r.name))
            for s in d.requires or []:
                q = Requirement(s); base = q.marker is None or q.marker.evaluate({'extra': ''})
                if (not e and base) or (e and not base and q.marker.evaluate({'extra': e})): todo.append(q)
    return seen


def _parts(d) -> set:
    "Path parts of a distribution's files inside its site-packages (scripts and other files outside it left out)."
    return {PurePosixPath(str(f)).parts for f in d.files or [] if PurePosixPath(str(f)).parts[0] != '..'}


def link_distributions(dists:dict, # canonical name -> Distribution (from `closure`)
                       site:Path, # the fresh environment's site-packages
                      ) -> list[Path]:
    "Symlink exactly these distributions' files into `site`: whole folders where no other distribution shares them."
    mine = [(d, p) for d in dists.values() for p in _parts(d)]
    others = {p[:k] for d in md.distributions() if canonicalize_name(d.metadata['Name'] or '') not in dists
              for p in _parts(d) for k in range(1, len(p) + 1)}   # every path prefix another distribution has files under
    made = []
    def place(prefix):
        here = {p[:len(prefix) + 1]: d for d, p in mine if p[:len(prefix)] == prefix and len(p) > len(prefix)}
        for key, d in sorted(here.items()):
            if key[-1] == '__pycache__': continue
            target, link = Path(d.locate_file(PurePosixPath(*key))), site / PurePosixPath(*key)
            if key in others and target.is_dir(): link.mkdir(exist_ok=True); place(key)   # shared folder: link inside it
            elif not link.exists(): link.symlink_to(target); made.append(link)
    place(())
    return made


def du(path:Path) -> int:
    "Bytes on disk under `path`, symlinks followed, each file counted once."
    seen, total = set(), 0
    for root, dirs, files in os.walk(path, followlinks=True):
        for f in files:
            st = os.stat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen: seen.add((st.st_dev, st.st_ino)); total += st.st_blocks * 512
    return total


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    "The wheel built, a fresh venv with it and only the scoring dependencies, a tiny checkpoint and two demo photos."
    tmp = tmp_path_factory.mktemp('wheel'); assert REPO not in tmp.parents
    whl, log = build_wheel(tmp)
    meta = wheel_metadata(whl)
    base = [r for r in meta.get_all('Requires-Dist') if 'extra ==' not in r]
    venv = tmp / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=120)
    py = venv / 'bin' / 'python'
    site = Path(subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               capture_output=True, text=True, check=True).stdout.strip())
    dists = closure(base)
    links = link_distributions(dists, site)
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '-q', '--no-deps', '--no-index', str(whl)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    from qualiclip.core import write_demo_photos
    from qualiclip.model import random_official_checkpoint
    work = tmp / 'outside'; work.mkdir()
    ckpt = random_official_checkpoint(work / 'tiny.pth', 'qualiclip-tiny', seed=1)
    photos = write_demo_photos(work / 'photos', 'test')
    run_env = {'PATH': f"{venv / 'bin'}:/usr/bin:/bin", 'HOME': str(tmp), 'HF_HUB_OFFLINE': '1', 'PYTHONNOUSERSITE': '1',
               'LANG': 'C.UTF-8'}
    return dict(tmp=tmp, whl=whl, log=log, meta=meta, base=base, venv=venv, py=py, site=site, dists=dists, links=links,
                work=work, ckpt=ckpt, photos=photos, run_env=run_env)


def test_wheel_metadata(env):
    "Lower bounds only, the scoring dependencies as base, the six extras, licence, URLs, LICENSE and configs shipped."
    meta, base = env['meta'], env['base']
    assert {canonicalize_name(Requirement(r).name) for r in base} == BASE, base
    reqs = meta.get_all('Requires-Dist')
    assert not [r for r in reqs if '==' in str(Requirement(r).specifier)], reqs
    assert all(str(Requirement(r).specifier) for r in base), base    # every base requirement has a lower bound
    assert set(meta.get_all('Provides-Extra')) == EXTRAS
    extra = lambda e: {canonicalize_name(Requirement(r).name) for r in reqs if f'extra == "{e}"' in r}
    assert {'seaborn', 'scipy', 'dvclive', 'grad-cam', 'kornia'} <= extra('train') and 'seaborn' not in extra('explore')
    assert extra('shards') == {'pyarrow', 'webdataset'} and 'ipywidgets' in extra('explore')
    assert extra('onnx') == {'onnx', 'onnxruntime'}
    assert {'nbdev', 'mkdocs-material'} <= extra('docs') and extra('train') | extra('explore') | extra('shards') <= extra('docs')
    assert extra('docs') | {'pytest', 'dvc'} <= extra('dev')
    assert meta['License-Expression'] == 'Apache-2.0' and meta['Requires-Python'] == '>=3.10'
    assert 'Programming Language :: Python :: 3.11' in meta.get_all('Classifier')
    urls = dict(u.split(', ', 1) for u in meta.get_all('Project-URL'))
    assert urls['Paper'] == 'https://arxiv.org/abs/2403.11176' and urls['Source'].startswith('https://github.com/')
    assert 'image-quality-assessment' in meta['Keywords']
    with zipfile.ZipFile(env['whl']) as z:
        names = z.namelist()
        assert 'qualiclip/configs/qualiclip-tiny.json' in names and 'qualiclip/cli.py' in names
        lic = z.read(next(n for n in names if n.endswith('licenses/LICENSE'))).decode()
    assert 'Apache License' in lic and 'CC BY-NC 4.0' in lic
    assert not any(n.startswith(('tests/', 'nbs/')) or '__pycache__' in n for n in names)


def test_build_has_no_setuptools_warnings(env):
    "No packaging warning (a data folder absent from `packages` is one)."
    bad = [l for l in env['log'].splitlines() if re.search(r'[A-Za-z]+Warning:|would be ignored|absent from the `packages`', l)]
    assert not bad, bad


def test_exact_pins_live_in_the_constraints_file():
    "settings.ini asks for lower bounds only; constraints.txt holds the exact versions `make install` uses."
    ini = (REPO / 'settings.ini').read_text()
    keys = re.findall(r'^(\w*requirements) = (.*)$', ini, re.M)
    assert {k for k, _ in keys} >= {'requirements', 'train_requirements', 'explore_requirements', 'shards_requirements',
                                    'docs_requirements', 'dev_requirements'}
    assert not [r for _, v in keys for r in v.split() if '==' in r]
    pins = dict(l.split('==') for l in (REPO / 'constraints.txt').read_text().splitlines() if l and not l.startswith('#'))
    assert pins['torch'] == '2.14.1' and pins['torchvision'] == '0.29.1' and pins['fastcore'] == '1.14.5'
    assert 'qualiclip' not in {canonicalize_name(k) for k in pins}
    assert 'pip install -q -c constraints.txt -e ".[dev]"' in (REPO / 'Makefile').read_text()


def test_scoring_only_environment(env, capsys):
    "The fresh venv has the wheel and the scoring dependencies, consistent (pip check), and no extra."
    py, site = env['py'], env['site']
    assert set(env['dists']) >= BASE and not set(env['dists']) & {'seaborn', 'scipy', 'matplotlib', 'dvclive', 'scikit-learn'}
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'check'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'No broken requirements' in r.stdout, r.stdout + r.stderr
    probe = ("import importlib.util as u, sys, qualiclip; print(qualiclip.__file__); "
             f"print([m for m in {EXTRA_MODULES!r} if u.find_spec(m)]); "
             "print([m for m in ['torch', 'torchvision', 'open_clip', 'PIL', 'numpy', 'pandas', 'tqdm', 'fastcore', 'yaml'] if not u.find_spec(m)])")
    r = subprocess.run([py, '-c', probe], cwd=env['work'], env=env['run_env'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    file, extras, missing = r.stdout.splitlines()
    assert Path(file).resolve().is_relative_to(env['venv'].resolve()), file   # the wheel's copy, not the repository's
    assert extras == '[]' and missing == '[]', (extras, missing)
    size = du(site)
    with capsys.disabled():
        print(f"\nscoring-only install: {len(env['dists'])} distributions + qualiclip, {size / 2**20:,.0f} MiB in site-packages "
              f"({size / 1e9:.2f} GB; torch {du(Path(md.distribution('torch').locate_file('torch'))) / 2**20:,.0f} MiB)")
    assert size > 500 * 2**20


def in_repo_scores(env) -> list[float]:
    "The same photos scored by the repository's package, in this process."
    from qualiclip.core import load_image
    from qualiclip.model import QualiCLIP
    return QualiCLIP.from_checkpoint(env['ckpt']).score([load_image(p) for p in env['photos']]).tolist()


def test_score_cli_and_example_outside_the_repository(env):
    "`qualiclip score` and the three-line example in the fresh venv give the in-repository scores (1e-6)."
    want = in_repo_scores(env)
    assert len(want) == 2 and all(0 < s < 1 for s in want) and abs(want[0] - want[1]) > 1e-6, want
    out = env['work'] / 'scores.csv'
    r = subprocess.run([env['venv'] / 'bin' / 'qualiclip', 'score', *map(str, env['photos']), '--weights', str(env['ckpt']),
                        '--out', str(out), '--device', 'cpu'], cwd=env['work'], env=env['run_env'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [Path(x['path']).name for x in rows] == [p.name for p in env['photos']] and all(x['error'] == '' for x in rows)
    assert [(int(x['width']), int(x['height'])) for x in rows] == [(451, 300), (640, 427)]
    assert max(abs(float(x['score']) - w) for x, w in zip(rows, want)) < 1e-6, (rows, want)
    (env['work'] / 'example.py').write_text(EXAMPLE)
    r = subprocess.run([env['py'], 'example.py', 'tiny.pth', *map(str, env['photos'])], cwd=env['work'], env=env['run_env'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-6 and len(got) == 2, (got, want)
