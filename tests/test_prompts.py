"""QualiCLIP+ wiring: the `prompts:` sections of the three profiles, the fit_prompts stage and the CLI entry."""
import os
import yaml
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from qualiclip.core import repo_root
from dataclasses import fields
from qualiclip.prompts import PromptsConfig, prompts_key

ROOT = repo_root()
PROFILES = ['params.yaml'] + sorted(str(f.relative_to(ROOT)) for f in (ROOT / 'params').glob('*.yaml'))   # every profile


@pytest.mark.parametrize('f', PROFILES)
def test_profile_prompts_section(f):
    from qualiclip.config import load_profile
    p = load_profile(str(ROOT / f))   # overlays resolved, defaults filled in
    sec = p['prompts']
    assert set(sec) == {k.name for k in fields(PromptsConfig)} | {'fit'}, f"{f}: prompts keys differ from the recipe"
    recipe = PromptsConfig.from_params(p)
    assert recipe.n_ctx == 16 and recipe.temperature == 2.0
    # every T2 training side has its prompts, under the key the T2 notebook looks for
    sides = {pair.split('>')[0] for pair in p['paper']['T2_cross_dataset']['pairs']}
    assert {prompts_key(s) for s in sides} == set(sec['fit']), f"{f}: prompts.fit keys must be the T2 training sides"
    for key, item in sec['fit'].items():
        assert set(item) == {'dataset', 'subset'} and item['dataset'] in p['datasets']
        assert prompts_key(f"{item['dataset']}[{item['subset']}]" if item['subset'] else item['dataset']) == key


def test_paper_recipe_is_pyiqas():
    from qualiclip.config import load_profile
    r = PromptsConfig.from_params(load_profile('paper'))
    assert (r.epochs, r.lr, r.batch_size, r.crop, r.flip, r.w_mse, r.w_plcc) == (50, 0.002, 8, 384, True, 1.0, 1.0)


def test_dvc_stage():
    d = yaml.safe_load(open(ROOT / 'dvc.yaml'))['stages']
    st = d['fit_prompts']
    assert st['foreach'] == '${prompts.fit}'
    assert 'outputs/prompts/${key}/prompts.pth' in str(st['do']['outs'])
    assert 'qualiclip/prompts.py' in st['do']['deps'] and '${prepare.index}/${item.dataset}.csv' in st['do']['deps']
    t2 = d['table_cross_dataset']['deps']
    assert 'outputs/prompts' in t2 and 'qualiclip/prompts.py' in t2


def test_cli_help(capsys):
    from qualiclip.cli import COMMANDS, main
    assert COMMANDS['fit-prompts'] == 'qualiclip.prompts:fit_prompts_cmd'
    with pytest.raises(SystemExit) as e: main(['fit-prompts', '--help'])
    assert e.value.code == 0 and '--subset' in capsys.readouterr().out
