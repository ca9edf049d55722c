"""scripts/attention_offsets.py: peaks inside the box agree with the evaluation's localisation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from model import load_model
from model.checkpoint import build_model, save_checkpoint
from model.training.data import read_attributes
from model.training.evaluate import evaluate_split
from model.training.synth import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import attention_offsets  # noqa: E402


@pytest.mark.parametrize("attribute", ["sleeve_length", "hem_length"])
def test_offsets_agree_with_localisation(tmp_path, attribute):
    root = tmp_path / "synth"
    generate(root, seed=5, n_train=0, n_valid=0, n_test=240, size=64, workers=1)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(build_model("tiny", read_attributes(root)), ckpt)
    rows = attention_offsets.offsets(ckpt, root, attribute)
    report = evaluate_split(load_model(ckpt, device="cpu"), root, "test", loc_limit=1000)
    loc = report["localisation"]
    assert len(rows) == loc["counts"][attribute]
    inside = ((rows[:, 0] == 0) & (rows[:, 1] == 0)).mean()
    assert 100 * inside == pytest.approx(loc["per_attribute"][attribute])
    assert (rows[:, 2] > 0).all()
