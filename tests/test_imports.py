"""The library's import graph: no module imports another that (directly or through others) imports it back, and
scoring never loads the evaluation code."""
import ast, os, subprocess, sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / 'qualiclip'
MODULES = sorted(p.stem for p in LIB.glob('*.py') if p.stem not in ('_modidx',))

# Imports made inside functions (at call time, never while a module loads) that would close a loop, allowed by name.
# None is left: index files are read by `datasets.read_index`, a profile's training settings come from
# `train.train_config` (`pipeline` imports both from there), and the file listing, pixel check, batching and name
# helpers that `scoring` and `shards` share live in `files`, below both (`shards` never imports `scoring`; `scoring`
# loads `shards` at call time for Parquet output). Keep it empty: any loop, even through call-time imports, fails.
KNOWN_UPWARD_CALL_TIME_IMPORTS = set()


def _targets(node, names):
    "qualiclip modules named by one import statement."
    if isinstance(node, ast.ImportFrom):
        if node.level == 1 and node.module: return {node.module.split('.')[0]} & names
        if node.module == 'qualiclip': return {a.name for a in node.names} & names
        if node.module and node.module.startswith('qualiclip.'): return {node.module.split('.')[1]} & names
    if isinstance(node, ast.Import):
        return {a.name.split('.')[1] for a in node.names if a.name.startswith('qualiclip.')} & names
    return set()


def import_graph(module_level_only:bool=True) -> dict:
    "module -> the qualiclip modules it imports (at module level, or anywhere in its code)."
    names, g = set(MODULES), {}
    for m in MODULES:
        tree = ast.parse((LIB / f'{m}.py').read_text())
        if module_level_only:   # what runs while the module loads (also under a module-level `if`/`try`)
            nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     for n in ast.walk(top)]
        else: nodes = list(ast.walk(tree))
        g[m] = set().union(*[_targets(n, names) for n in nodes]) - {m}
    return g


def cycles(g:dict) -> set:
    "Pairs of modules that reach each other."
    def reach(a):
        seen, todo = set(), [a]
        while todo:
            for b in g[todo.pop()] - seen: seen.add(b); todo.append(b)
        return seen
    r = {m: reach(m) for m in g}
    return {frozenset({a, b}) for a in g for b in r[a] if a != b and a in r[b]}


def test_graph_sees_the_imports():
    g = import_graph()
    assert {'core', 'datasets', 'metrics', 'model', 'scoring'} <= g['evaluate'] and 'niqe' not in g['evaluate'], g['evaluate']
    assert g['niqe'] == {'core'} and g['core'] == set(), (g['niqe'], g['core'])
    assert 'scoring' in import_graph(False)['pipeline']


def test_no_cycle_at_module_level():
    c = cycles(import_graph())
    assert not c, f"module-level import cycles: {sorted(map(sorted, c))}"


def test_no_new_cycle_through_call_time_imports():
    g = import_graph(False)
    for a, b in KNOWN_UPWARD_CALL_TIME_IMPORTS: g[a] = g[a] - {b}
    c = cycles(g)
    assert not c, f"import loop(s) through call-time imports: {sorted(map(sorted, c))}"


def test_no_cycle_at_all():
    "Call-time imports included, with nothing allowed by name."
    assert KNOWN_UPWARD_CALL_TIME_IMPORTS == set()
    g = import_graph(False)
    c = cycles(g)
    assert not c, f"import loop(s), call-time imports included: {sorted(map(sorted, c))}"
    assert 'pipeline' not in g['evaluate'] and 'pipeline' not in g['train'], (g['evaluate'], g['train'])
    assert 'scoring' not in g['shards'] and 'files' in import_graph()['shards'] and 'files' in import_graph()['scoring']
    assert g['files'] == {'core'}, g['files']


def _loaded_after(code:str) -> set:
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    r = subprocess.run([sys.executable, '-c', code + "\nimport sys; print(' '.join(sorted(m for m in sys.modules if m.startswith('qualiclip'))))"],
                       capture_output=True, text=True, env=env, cwd=LIB.parent, timeout=300)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_scoring_does_not_load_evaluation():
    got = _loaded_after("import qualiclip.scoring")
    assert 'qualiclip.scoring' in got and 'qualiclip.evaluate' not in got and 'qualiclip.niqe' not in got, got


def test_clipiqa_scorer_does_not_load_evaluation():
    got = _loaded_after("from qualiclip.model import TINY_CONFIG\nfrom qualiclip.scoring import get_scorer\n"
                        "get_scorer('clipiqa', backbone=TINY_CONFIG, random_init=True, device='cpu')")
    assert 'qualiclip.evaluate' not in got, got


def test_niqe_scorer_loads_niqe_only():
    got = _loaded_after("from qualiclip.scoring import get_scorer\n"
                        "try: get_scorer('niqe')\nexcept ValueError as e: assert 'NIQE needs a pristine model' in str(e)")
    assert 'qualiclip.niqe' in got and 'qualiclip.evaluate' not in got, got


def test_registry_import_error_surfaces_as_itself(monkeypatch):
    from qualiclip import scoring
    monkeypatch.setitem(scoring.SCORERS, 'broken', 'qualiclip.no_such_module:builder')
    try: scoring.get_scorer('broken')
    except ModuleNotFoundError as e: assert 'qualiclip.no_such_module' in str(e)
    else: raise AssertionError('expected the import error')
    assert all(isinstance(v, str) and ':' in v for k, v in scoring.SCORERS.items() if k != 'broken')
    import importlib
    for k, v in scoring.SCORERS.items():
        if k == 'broken': continue
        mod, fn = v.split(':'); assert callable(getattr(importlib.import_module(mod), fn)), v
