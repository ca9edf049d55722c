"""scripts/attention_offsets.py: peaks inside the box agree with the evaluation's localisation."""

from __future__ import annotations

import importlib.util

import pytest
from testkit import REPO_ROOT, synthetic_dataset, tiny_checkpoint

from model import load_model
from model.training.evaluate import evaluate_split

SCRIPT = REPO_ROOT / "scripts" / "attention_offsets.py"
_spec = importlib.util.spec_from_file_location("attention_offsets", SCRIPT)
attention_offsets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attention_offsets)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """240 synthetic test images with their boxes, and a random tiny checkpoint."""
    base = tmp_path_factory.mktemp("offsets")
    root = synthetic_dataset(base / "synth", seed=5, n_train=0, n_valid=0, n_test=240)
    return root, tiny_checkpoint(base / "tiny.pt", root)


@pytest.mark.parametrize("attribute", ["sleeve_length", "hem_length"])
def test_offsets_agree_with_localisation(split, attribute):
    root, ckpt = split
    rows = attention_offsets.offsets(ckpt, root, attribute)
    report = evaluate_split(load_model(ckpt, device="cpu"), root, "test", loc_limit=1000)
    loc = report["localisation"]
    assert len(rows) == loc["counts"][attribute]
    inside = ((rows[:, 0] == 0) & (rows[:, 1] == 0)).mean()
    assert 100 * inside == pytest.approx(loc["per_attribute"][attribute])
    assert (rows[:, 2] > 0).all()
