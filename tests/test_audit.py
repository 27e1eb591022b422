"""`qualiclip audit` on models whose truth is known: tiny models trained from one start for 200 steps, setting A
(m_rank 0.01) and setting B (m_rank 0.2), and a second run of A with another seed that plays the reference. The audit
must rank A closer to the reference than B, on two seeds; the same check on a shuffled distance fails."""
from pathlib import Path

import pytest
import torch

from qualiclip.audit import audit
from qualiclip.core import seed_everything
from qualiclip.model import TINY_CONFIG, QualiCLIP
from qualiclip.train import TrainConfig, train

A, B, STEPS = 0.01, 0.2, 200


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "The start, and for seeds 0 and 1: A, B and the reference (A, seed + 100); each 200 steps of the tiny model on the demo photos."
    root = tmp_path_factory.mktemp("audit")
    seed_everything(0); m = QualiCLIP(TINY_CONFIG, pretrained=None); (root / "init").mkdir()
    torch.save(m.clip.state_dict(), root / "init" / "clip.pt"); m.export_official(root / "init" / "qualiclip.pth")
    def run(name, seed, m_rank):
        cfg = TrainConfig(backbone=TINY_CONFIG, pretrained=str(root / "init" / "clip.pt"), crop=64, levels=5, max_distortions=1,
                          batch_size=4, workers=0, steps=STEPS, warmup_steps=0, val_every=STEPS, val_repeats=1, ckpt_every=STEPS,
                          log_every=STEPS, seed=seed, out=str(root / name), progress=False, device="cpu", precision="fp32",
                          m_rank=m_rank, scale=(0.35, 0.35), val_scale=0.35, lr=1e-3)
        train(cfg); return root / name / "qualiclip.pth"
    out = {}
    for s in (0, 1):
        out[s] = {"A": run(f"A{s}", s, A), "B": run(f"B{s}", s, B), "reference": run(f"R{s}", s + 100, A)}
    return root, out


def audited(root, r, s):
    return audit(r["reference"], root / "init" / "qualiclip.pth", {"A": r["A"], "B": r["B"]}, root / f"audit{s}",
                 samples=48, crop=64, levels=5).set_index("model")


def a_closer(t) -> bool:
    return t.loc["A", "distance"] < t.loc["B", "distance"] and t.loc["A", "rank"] == 1


def test_audit_ranks_the_reference_setting_closest_on_two_seeds(runs):
    root, r = runs
    for s in (0, 1):
        t = audited(root, r[s], s)
        print(f"seed {s}: A {t.loc['A', 'distance']:.4f} (gaps {t.loc['A', 'gap_distance']:.4f}, drift {t.loc['A', 'drift_distance']:.4f}), "
              f"B {t.loc['B', 'distance']:.4f} (gaps {t.loc['B', 'gap_distance']:.4f}, drift {t.loc['B', 'drift_distance']:.4f})")
        assert a_closer(t), t
        assert t.loc["A", "gap_distance"] < t.loc["B", "gap_distance"] and t.loc["A", "drift_distance"] < t.loc["B", "drift_distance"]
        assert t.loc["(start)", "gap_distance"] == pytest.approx(1.0)


def test_the_check_fails_when_the_distances_are_shuffled(runs):
    "The same check with the distances shuffled between the candidates (A's reported for B and B's for A) fails on both seeds."
    root, r = runs
    for s in (0, 1):
        t = audit(r[s]["reference"], root / "init" / "qualiclip.pth", {"A": r[s]["B"], "B": r[s]["A"]}, root / f"shuffled{s}",
                  samples=48, crop=64, levels=5).set_index("model")
        assert not a_closer(t), t
