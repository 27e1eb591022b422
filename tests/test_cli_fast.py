"`qualiclip --help` and `qualiclip <command> --help` without model code; one spelling per option; closed sets as choices."
import inspect, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
from qualiclip import cli
from qualiclip.cli import COMMANDS, SUMMARIES, resolve_command

ROOT = Path(__file__).resolve().parents[1]

def _help(p):
    "A parser's help at a fixed width."
    os.environ['COLUMNS'] = '100'
    return p.format_help()

def test_summaries_are_the_docstrings():
    test = {n: (inspect.getdoc(resolve_command(s)) or '').split('\n')[0] for n, s in COMMANDS.items()}
    assert SUMMARIES == test

@pytest.mark.parametrize('name', list(COMMANDS))
def test_static_help_is_the_imported_one(name):
    "Read from the source, a command's spec and help equal those built from the imported function."
    spec = cli.static_spec(name)                       # no NotStatic: every command's help is built without imports
    func = resolve_command(COMMANDS[name])
    assert spec == cli._func_spec(func)
    static = cli._parser_from_spec(spec, f'qualiclip {name}', name)
    real = cli.build_parser(func, f'qualiclip {name}', name)
    assert [a.option_strings for a in static._actions] == [a.option_strings for a in real._actions]
    assert _help(static) == _help(real)
    assert spec['doc'] == SUMMARIES[name]

@pytest.mark.parametrize('name', list(COMMANDS))
def test_one_spelling_and_one_default(name):
    p = cli.command_parser(name); f = p._get_formatter()
    opts = [s for a in p._actions for s in a.option_strings]
    assert [s for s in opts if '_' in s] == [], name
    assert len(opts) == len(set(opts))
    for a in p._actions:
        h = f._expand_help(a) if a.help else ''
        assert h.count('(default') <= 1, (name, h)
        assert '(default: None)' not in h, (name, h)
        if isinstance(a, cli.argparse.BooleanOptionalAction): assert len(a.option_strings) == 2, a.option_strings
        if a.choices and a.default not in (None, cli.argparse.SUPPRESS): assert a.default in a.choices, (name, a.dest)

def test_score_options():
    h = ' '.join(_help(cli.command_parser('score')).split())
    assert '--random-init, --no-random-init score with random weights' in h
    assert '--random_init' not in h and '--no-random_init' not in h
    assert '--model {qualiclip,clipiqa,niqe,qualiclip+}' in h
    assert '--precision {auto,fp32,bf16,fp16,int8,fast}' in h and '--device {auto,cpu,cuda,cuda:N}' in h
    assert '--batch-pixels BATCH_PIXELS most pixels per forward pass: large photos get smaller batches (a 12 MP photo its own); default 2**24 on a GPU, 2**20 on the CPU; 0: no budget' in h
    assert '--backbone BACKBONE open_clip config (default: inferred from --weights, else RN50-quickgelu) --pretrained' in h
    from qualiclip.scoring import SCORERS
    assert cli.scorer_names() == tuple(SCORERS)

def test_train_config_options():
    h = ' '.join(_help(cli.command_parser('train')).split())
    assert '--bn {train,frozen,auto}' in h and '--level-pairs {all,adjacent}' in h and '--space {cosine,prob}' in h
    assert '--channels-last, --no-channels-last' in h and '--lr LR' in h
    assert '--stop-at STOP_AT stop after this step as if interrupted (checkpoint written), for tests and time limits --progress' in h
    assert '--crop CROP' in h and '[224]' in h and '[None]' not in h and '(default' not in h.split('TrainConfig options')[1]
    assert '--resume {auto,yes,no}' in h

def _run(argv, env=None):
    "Run `qualiclip ARGV` as a new process."
    return subprocess.run([sys.executable, '-m', 'qualiclip.cli', *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, 'PYTHONPATH': str(ROOT), **(env or {})}, timeout=120)

@pytest.mark.parametrize('argv', [['score', 'x.jpg', '--precision', 'fp64'], ['score', 'x.jpg', '--device', 'gpu'],
                                  ['score', 'x.jpg', '--model', 'nope'], ['score', 'x.jpg', '--random_init'],
                                  ['evaluate', 'demo', '--split', 'half'], ['train', '--bn', 'off']])
def test_bad_values_exit_2(argv):
    with pytest.raises(SystemExit) as e: cli.main(argv)
    assert e.value.code == 2

def test_good_values_parse():
    f = resolve_command(COMMANDS['score'])
    kw = cli.parse_command(f, ['x.jpg', '--device', 'cuda:1', '--precision', 'bf16', '--model', 'niqe', '--random-init'], command='score')
    assert (kw['device'], kw['precision'], kw['model'], kw['random_init'], kw['paths']) == ('cuda:1', 'bf16', 'niqe', True, ['x.jpg'])
    kw = cli.parse_command(resolve_command(COMMANDS['fit-prompts']), ['w.pth', 'demo', '--device', 'none'], command='fit-prompts')
    assert kw['device'] is None

def test_help_imports_no_model_code(tmp_path):
    "`qualiclip --help` and `qualiclip score --help` run with torch and open_clip made unimportable, and import neither."
    (tmp_path / 'sitecustomize.py').write_text(textwrap.dedent('''
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'open_clip', 'fastcore'): raise ImportError(f'{name} is blocked in this test')
        sys.meta_path.insert(0, _Block())
    '''))
    env = {'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}'}
    for argv, want in [(['--help'], 'Score images and write a CSV'), (['score', '--help'], '--no-random-init'),
                       (['train', '--help'], 'TrainConfig options'), (['bench', 'score', '--help'], 'usage: qualiclip bench score')]:
        r = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'qualiclip.cli', *argv], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, **env}, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert want in r.stdout
        mods = [l.split('|')[-1].strip() for l in r.stderr.splitlines() if l.startswith('import time:')]
        assert 'sitecustomize' in mods                 # the blocker was active
        assert not [m for m in mods if m.split('.')[0] in ('torch', 'open_clip', 'numpy', 'fastcore')], argv
    r = subprocess.run([sys.executable, '-c', 'import torch'], capture_output=True, text=True, env={**os.environ, **env})
    assert r.returncode != 0 and 'blocked' in r.stderr  # the blocker works

def test_bench_cli():
    "tools/bench_cli.py times the three processes in one run and names the CPU (the figures are read, never asserted: speed is the benchmark's to print)."
    import json
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'bench_cli.py'), '--runs', '1'], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith('CPU: ')
    res = json.loads(r.stdout.strip().splitlines()[-1])
    m = res['median_s']
    assert list(m) == ['qualiclip --help', 'qualiclip score --help', 'python -c "import torch"'] and res['runs'] == 1
    assert all(isinstance(v, float) and v > 0 for v in m.values())
    from qualiclip.core import CPU_FLAGS
    assert set(res['flags']) <= set(CPU_FLAGS)
