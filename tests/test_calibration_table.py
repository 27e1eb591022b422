"""The C1 notebook (stage table_calibration): our baselines beside pyiqa's published numbers, on constructed scores.

The published rows fix which images and which size each number is for; a row is comparable only when ours are the
same count at the same shorter side. Scores are built so that each correlation is known.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_scores(root: Path, model: str, dataset: str, n: int, seed: int, short: int, split=None, higher_better=True,
                 resize_short=None):
    "scores.csv as evaluate writes it: n images, MOS 1..5, a noisy score (negated for lower-is-better), sizes."
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n); q = mos + rng.normal(0, 1.0, n)
    d = root / "outputs" / "eval" / model / dataset; d.mkdir(parents=True)
    pd.DataFrame({"image": [f"i{k}.jpg" for k in range(n)], "score": q if higher_better else -q, "mos": mos,
                  "split": split if split is not None else np.nan, "resize_short": resize_short if resize_short else np.nan,
                  "width": short * 4 // 3, "height": short, "score_higher_better": higher_better}).to_csv(d / "scores.csv", index=False)
    return mos, q


def test_calibration_rows_compare_only_the_same_images_at_the_same_size(tmp_path):
    mos, q = write_scores(tmp_path, "clipiqa_pyiqa", "clive", 1162, 0, 500)                     # as published: comparable
    split = np.array(["test"] * 2015 + ["train"] * 500)
    mk, qk = write_scores(tmp_path, "clipiqa_pyiqa", "koniq10k", 2515, 1, 768, split=split)      # test split, at 1024x768
    write_scores(tmp_path, "niqe", "spaq", 11125, 2, 3000, higher_better=False, resize_short=512)   # SPAQ at 512, not 448 ...
    ms, qs = write_scores(tmp_path, "niqe_448", "spaq", 11125, 4, 3000, higher_better=False, resize_short=448)   # ... but `use` picks this
    write_scores(tmp_path, "niqe", "clive", 4, 3, 500, higher_better=False)                      # a stand-in
    out = tmp_path / "out"; out.mkdir()
    r = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs/paper/C1_calibration.ipynb"), str(out / "c1.ipynb"),
                        "-p", "clipiqa", "clipiqa_pyiqa", "-y", "use: {niqe.spaq: niqe_448}", "-p", "out_md", str(out / "c.md"), "-p", "out_csv", str(out / "c.csv"),
                        "-p", "out_metrics", str(out / "c.json")], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, QUALICLIP_ROOT=str(tmp_path), HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    t = pd.read_csv(out / "c.csv").set_index(["model", "dataset"])
    clive = t.loc[("clipiqa", "clive")]
    assert clive.comparable == "yes" and clive.n_ours == 1162
    assert clive.srcc_ours == pytest.approx(spearmanr(q, mos)[0], abs=1e-12) and clive.plcc_ours == pytest.approx(pearsonr(q, mos)[0], abs=1e-12)
    assert clive.d_srcc == pytest.approx(clive.srcc_ours - 0.6955, abs=1e-12)
    kon = t.loc[("clipiqa", "koniq10k")]                                   # only the 2015 test images count
    assert kon.n_ours == 2015 and kon.srcc_ours == pytest.approx(spearmanr(qk[:2015], mk[:2015])[0], abs=1e-12)
    assert kon.comparable == "no: scored at short side 768, published 384"
    spaq = t.loc[("niqe", "spaq")]                                         # lower is better: the sign is turned, as pyiqa reports
    assert spaq.comparable == "yes" and spaq.srcc_ours == pytest.approx(spearmanr(qs, ms)[0], abs=1e-12) and spaq.srcc_ours > 0.5
    assert t.loc[("niqe", "clive")].comparable == "no: 4 of 1162 images"
    assert t.loc[("clipiqa", "flive")].comparable.startswith("no: not evaluated")
    assert json.loads((out / "c.json").read_text()) == {"comparable_rows": 2, "clipiqa.clive.d_srcc": round(clive.d_srcc, 4),
                                                         "niqe.spaq.d_srcc": round(spaq.d_srcc, 4)}
    assert "2 of 7 published rows are comparable." in (out / "c.md").read_text()
