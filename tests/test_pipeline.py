"""The DVC pipeline and its two profiles: stages, parameters, papermill notebooks, nbdev skipping them."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc") if (BIN / "dvc").exists() else "dvc"
ENV = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
PAPER_NBS = sorted((ROOT / "nbs" / "paper").glob("*.ipynb"))
OPEN_KEYS = {"ablations", "roots", "labels", "start", "models", "compared", "pools", "fit", "paper"}  # dicts whose keys are data (names), not settings


def load(p): return yaml.safe_load((ROOT / p).read_text())


def prof(name):
    "A profile resolved from its overlays (params/<name>.yaml), every key checked and defaulted."
    from qualiclip.config import load_profile
    return load_profile(name)


PROFILES = ("demo", "paper", "paper-smoke", "paper-smoke-gpu")


def keys(d, prefix=""):
    "All nested setting names of a params dict."
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in OPEN_KEYS: out |= keys(v, prefix + k + ".")
    return out


def parameters_cell(nb_path):
    "The literal defaults of the notebook's one `parameters` cell."
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb_path.name}: {len(cells)} cells tagged parameters, expected exactly 1"
    src = "".join(cells[0]["source"])
    return {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(src).body}


def stage_list(repo: Path) -> list:
    r = subprocess.run([DVC, "stage", "list", "--name-only"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_profiles_have_same_keys():
    demo, paper = prof("demo"), prof("paper")
    assert load("params.yaml") == {k: v for k, v in demo.items()}   # the committed params.yaml is the resolved demo
    assert keys(demo) == keys(paper), keys(demo) ^ keys(paper)
    assert demo["profile"] == "demo" and paper["profile"] == "paper"
    assert demo["device"] == "cpu" and paper["device"].startswith("cuda")
    assert demo["model"]["backbone"] == "qualiclip-tiny" and paper["model"]["backbone"] == "RN50-quickgelu"
    assert paper["model"]["start"] == {"openai": "data/weights/RN50.pt"} and demo["model"]["start"] == {"random": "qualiclip/model.py"}
    assert paper["train"]["pristine"] == "data/downloads/kadis700k.zip"   # the archive data.dvc imports, read in place
    for d in ["koniq10k", "clive", "flive", "spaq", "live", "csiq", "tid2013", "kadid10k"]: assert d in paper["datasets"], d


def test_paper_datasets_are_registered():
    from qualiclip.datasets import DATASETS
    for name in PROFILES:
        unknown = set(prof(name)["datasets"]) - set(DATASETS)
        assert not unknown, f"{name}: unknown datasets {unknown}"


def test_train_sections_are_valid_configs():
    pytest.importorskip("qualiclip.train")
    from qualiclip.pipeline import train_config
    for name in PROFILES:
        p = prof(name)
        cfg = train_config(p)
        assert cfg.backbone == p["model"]["backbone"] and cfg.device == p["device"] and cfg.seed == p["seed"]
        assert cfg.pretrained == str(ROOT / p["model"]["init_dir"] / "clip.pt")  # training starts from the init stage's weights
        for name in p["ablations"]:  # unknown keys raise; each ablation is the short recipe plus its own change
            a = train_config(p, ablation=name)
            assert all(getattr(a, k) == v for k, v in {**p["ablation_recipe"], **p["ablations"][name]}.items()), (name, p["ablation_recipe"])


def test_paper_smoke_is_the_paper_profile_at_small_scale():
    paper, smoke = prof("paper"), prof("paper-smoke")
    assert keys(paper) == keys(smoke), keys(paper) ^ keys(smoke)
    assert smoke["model"] == paper["model"] and smoke["prepare"] == paper["prepare"] and smoke["datasets"] == paper["datasets"]
    assert smoke["evaluate"]["models"] == paper["evaluate"]["models"] and smoke["compared"] == paper["compared"] == {"released": "data/released/qualiclip.pth"}
    assert set(smoke["ablations"]) == set(paper["ablations"])
    assert smoke["device"] == "cpu" and smoke["train"]["precision"] == "fp32" and smoke["train"]["compile"] is False


@pytest.mark.parametrize("nb", PAPER_NBS, ids=lambda p: p.stem)
def test_paper_notebook_defaults_equal_demo_profile(nb):
    from qualiclip.pipeline import paper_params
    defaults = parameters_cell(nb)
    given = paper_params(prof("demo"), nb.stem)   # what the pipeline passes: the section and the shared keys; defaults do the rest
    assert {**defaults, **given} == defaults, f"{nb.name}: parameters cell differs from the demo profile's: {given}"
    for name in ("paper", "paper-smoke"):
        assert set(paper_params(prof(name), nb.stem)) <= set(defaults), f"{name} paper.{nb.stem} gives parameters the notebook lacks"


def test_every_paper_notebook_has_a_stage():
    dvc = load("dvc.yaml")["stages"]
    cmds = " ".join(s.get("cmd", "") if isinstance(s, dict) and "cmd" in s else "" for s in dvc.values())
    for nb in PAPER_NBS: assert f"qualiclip paper {nb.stem}" in cmds, nb.stem


def test_nbdev_test_skips_paper_notebooks():
    from nbdev.test import _keep_file
    assert (ROOT / "nbs" / "paper" / ".notest").exists()
    assert PAPER_NBS and not any(_keep_file(p, ".notest") for p in PAPER_NBS)
    assert _keep_file(ROOT / "nbs" / "00_core.ipynb", ".notest")


def test_demo_stages():
    names = stage_list(ROOT)
    for s in ["pristine", "generate@demo", "index@demo", "init@random", "train", "evaluate@ours", "evaluate@clipiqa",
              "evaluate@niqe", "ablate@no_cons", "table_opinion_unaware", "table_cross_dataset", "table_ablations",
              "figure_levels", "gradcam", "gmad"]:
        assert s in names, s
    assert not any(n.startswith(("evaluate@released", "compare_released@")) for n in names)  # nothing of the paper's data in the demo


def test_no_user_input_is_a_stage_output():
    "DVC deletes a stage's outputs before running it: no path a user supplies may be one, in any profile."
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = []
    for name, st in dvc.items():
        body = st.get("do", st)
        for o in body.get("outs", []) + body.get("metrics", []) + body.get("plots", []):
            outs.append((name, next(iter(o)) if isinstance(o, dict) else o))
    user = ("${prepare.root}", "${train.pristine}", "${item.weights}", "${item}", "data/")
    assert not [(n, o) for n, o in outs if n != "generate" and o.startswith(user)]
    gen = dvc["generate"]["do"]["outs"]
    assert [next(iter(o)) for o in gen] == ["${prepare.root}/${item}"] and dvc["generate"]["foreach"] == "${prepare.generated}"
    for name in ("paper", "paper-smoke", "paper-smoke-gpu"):
        assert prof(name)["prepare"]["generated"] == [], name   # in the paper profiles every dataset folder is the user's


@pytest.fixture(scope="module")
def paper_repo(tmp_path_factory):
    "A scratch git+DVC repository holding dvc.yaml, data.dvc and the paper profile as params.yaml."
    d = tmp_path_factory.mktemp("paperprofile")
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=d, check=True, env=ENV)
    for f in ("dvc.yaml", "data.dvc"): shutil.copy(ROOT / f, d / f)
    from qualiclip.config import profile_cmd
    assert profile_cmd("paper", out=str(d / "params.yaml")) == 0   # the resolved profile, as `qualiclip profile paper` writes it
    return d


def test_paper_profile_stages(paper_repo):
    names = stage_list(paper_repo)
    p = prof("paper")
    for ds in p["datasets"]: assert f"index@{ds}" in names
    for m in ("ours", "clipiqa", "niqe", "released"): assert f"evaluate@{m}" in names
    assert "compare_released@released" in names and "init@openai" in names and "train" in names
    assert not any(n.startswith(("generate@", "prepare@", "unpack")) for n in names)


def test_paper_profile_depends_on_user_inputs(paper_repo):
    "The user's files are dependencies: RN50.pt -> init, each dataset folder -> its index -> evaluation."
    r = subprocess.run([DVC, "dag", "--dot"], cwd=paper_repo, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"index@koniq10k" -> "evaluate@ours"' in r.stdout and '"init@openai" -> "train"' in r.stdout, r.stdout
    assert '"index@koniq10k" -> "evaluate@released"' in r.stdout and '"index_pool@kadis700k" -> "train"' in r.stdout


def test_interrupted_training_resumes(tmp_path):
    """`dvc repro` killed mid-training, then run again, continues from the persisted checkpoint.pt (no restart)."""
    import signal, time
    pytest.importorskip("qualiclip.train")
    d = tmp_path / "repo"
    d.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=d, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=d, check=True, env=ENV)
    stage = load("dvc.yaml")["stages"]["train"]
    from qualiclip.core import write_demo_photos
    for s in ("train", "val"): write_demo_photos(d / "pristine" / s, s)
    train = dict(backbone="qualiclip-tiny", pretrained="none", pristine="pristine/train", val_pristine="pristine/val", crop=64,
                 levels=3, batch_size=2, workers=0, steps=40, lr=1e-3, warmup_steps=0, val_every=1, val_repeats=1, ckpt_every=1,
                 log_every=1, device="cpu", precision="fp32", seed=0, out="run", progress=False)
    (d / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    (d / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": stage["cmd"], "deps": ["pristine/train", "pristine/val"], "params": ["train"],
        "outs": stage["outs"]}}}))
    env = dict(ENV, PYTHONUNBUFFERED="1", QUALICLIP_ROOT=str(d), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "add", "-A"], cwd=d, check=True, env=env)  # dvclive needs a commit to exist
    subprocess.run(["git", "commit", "-qm", "scratch"], cwd=d, check=True, env=env)
    log1 = open(tmp_path / "first.log", "w")
    # Ctrl-C as in a terminal: restore SIGINT's default in the child (a shell started in the background ignores it)
    p = subprocess.Popen([DVC, "repro", "train"], cwd=d, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ck, t0 = d / "run" / "checkpoint.pt", time.time()
    while time.time() - t0 < 300 and p.poll() is None:
        if ck.exists() and "step 3:" in (tmp_path / "first.log").read_text(): break
        time.sleep(0.5)
    assert p.poll() is None, "training finished before it could be interrupted: " + (tmp_path / "first.log").read_text()[-2000:]
    os.killpg(p.pid, signal.SIGINT)
    p.wait(timeout=120)
    first = (tmp_path / "first.log").read_text()
    assert ck.exists(), first[-2000:]
    r = subprocess.run([DVC, "repro", "train"], cwd=d, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "resuming" in out                 # the run folder's checkpoint had the same settings: it was resumed
    assert "step 1:" not in out and "step 40:" in out, out[-3000:]  # it continued, it did not start again at step 1
    m = json.loads((d / "run" / "metrics.json").read_text())
    assert m["step"] == 40
    r = subprocess.run([DVC, "repro", "train"], cwd=d, env=env, capture_output=True, text=True, timeout=300)
    assert "didn't change, skipping" in r.stdout, r.stdout   # and a further repro is a no-op


def test_training_pool_is_listed_not_hashed():
    "Where the training pool is the user's (paper profiles), train depends on its list (stage index_pool), never on its folder."
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "${prepare.pool_dep}" in dvc["train"]["deps"] and "${train.pristine}" not in dvc["train"]["deps"]
    assert dvc["index_pool"]["do"]["always_changed"] is True and dvc["index_pool"]["foreach"] == "${prepare.pools}"
    for name in PROFILES:
        p = prof(name); prep = p["prepare"]
        if prep["pools"]:
            (pool, folder), = prep["pools"].items()
            assert folder == p["train"]["pristine"] and prep["pool_dep"] == f"{prep['index']}/pool-{pool}.csv", name
        else:
            assert prep["pool_dep"] == p["train"]["pristine"] == f"{p['pristine']['demo_dir']}/train", name   # built by the pipeline


def test_paper_smoke_knows_the_always_run_stages():
    "paper-smoke lets a second `dvc repro` re-run only the stages dvc.yaml marks always_changed; the two lists agree."
    import importlib.util
    spec = importlib.util.spec_from_file_location("paper_smoke", ROOT / "tools" / "paper_smoke.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    marked = {n for n, st in dvc.items() if st.get("do", st).get("always_changed")}
    assert marked == mod.ALWAYS_RUN == {"index_pool"}


@pytest.mark.parametrize("name", ["demo", "paper", "paper-smoke", "paper-smoke-gpu"])
def test_every_stage_param_resolves_in_every_profile(name):
    "Each `params:` key dvc.yaml names (foreach keys substituted) is in the resolved profile: DVC stops on a missing one mid-run."
    from qualiclip.config import load_profile
    p = load_profile(name)
    def at(path):
        v = p
        for part in path.split('.'):
            if not isinstance(v, dict) or part not in v: raise KeyError(path)
            v = v[part]
        return v
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing, checked = [], 0
    for stage, st in stages.items():
        keys = [None]
        if "foreach" in st:
            coll = at(st["foreach"].strip("${}"))
            keys = list(coll) if isinstance(coll, (dict, list)) else []
        for key in keys:
            for par in (st.get("do", st).get("params") or []):
                if not isinstance(par, str): continue
                par = par.replace("${key}", str(key)) if key is not None else par
                checked += 1
                try: at(par)
                except KeyError: missing.append(f"{stage}: {par}")
    assert checked > 20 and not missing, missing
