"The evaluation protocol shared by `evaluate`, T1, T2 and T3: one preprocessing policy per dataset, streamed scoring."
import json, os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from qualiclip.core import load_image
from qualiclip.datasets import load_dataset, miniature
from qualiclip.evaluate import evaluate, score_rows
from qualiclip.model import TINY_CONFIG, QualiCLIP, random_official_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_spaq_has_one_preprocessing_policy(tmp_path):
    "T1 reads `evaluate`'s scores; T2 scores through `score_rows`: the same SPAQ image gets the same score, resized as the registry says."
    root = miniature("spaq", tmp_path / "spaq", n=4, seed=0)
    df = load_dataset("spaq", root)
    assert (df.resize_short == 512).all()                      # the registry's policy for SPAQ's 4000x3000 photos
    model = QualiCLIP.from_checkpoint(random_official_checkpoint(tmp_path / "ck.pth", TINY_CONFIG, seed=0)).eval()
    evaluate("spaq", root, model, out_dir=tmp_path / "eval", progress=False)            # what T1 reads
    t1 = pd.read_csv(tmp_path / "eval" / "scores.csv").set_index("path").score
    t2 = score_rows(df, model, embeddings=True).set_index("path")                       # what T2 computes
    assert np.array_equal(t1.loc[df.path].to_numpy(), t2.score.loc[df.path].to_numpy())
    p = df.path.iloc[0]
    want = float(model.score([load_image(p, resize_short=512)])[0])
    assert abs(t2.score.loc[p] - want) < 1e-6
    native = float(model.score([load_image(p)])[0])
    assert abs(native - want) > 1e-6                           # the policy matters: native resolution scores differently
    f = np.stack(t2.embedding.loc[df.path].to_list())
    assert f.shape == (len(df), model.text_features.shape[1]) and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)


def _code(nb):
    return "\n".join("".join(c["source"]) for c in json.loads((ROOT / "nbs" / "paper" / nb).read_text())["cells"]
                     if c["cell_type"] == "code")


def test_t2_t3_stream_through_the_scoring_loader():
    "T2 and T3 never decode a dataset into memory themselves: they score through `score_rows` (a bounded buffer of decoded images)."
    for nb in ("T2_cross_dataset.ipynb", "T3_ablations.ipynb"):
        code = _code(nb)
        assert "score_rows(" in code, nb
        for loader in ("load_image(", "load_pil(", "Image.open("):
            assert loader not in code, (nb, loader)
        assert "resize_short" not in code, nb                 # the policy comes from the registry, never from the notebook


def test_figures_take_the_policy_from_the_indexes(tmp_path):
    "F2 loads its few images itself: `policy_resize` gives each the `resize_short` of the index that lists it (None elsewhere)."
    from qualiclip.evaluate import policy_resize
    from qualiclip.pipeline import index_pool, write_index
    root = miniature("spaq", tmp_path / "spaq", n=3, seed=0)
    write_index("spaq", root, tmp_path / "index" / "spaq.csv")
    index_pool(root, tmp_path / "index" / "pool-x.csv")          # not a dataset index: skipped
    p = load_dataset("spaq", root).path.iloc[0]
    assert policy_resize([p, str(tmp_path / "elsewhere.png")], tmp_path / "index") == [512, None]
