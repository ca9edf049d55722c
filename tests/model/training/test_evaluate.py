"""End-to-end: python -m model.evaluate on a tiny synthetic dataset with a random tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from testkit import REPO_ROOT, synthetic_dataset, tiny_checkpoint

from model import load_model
from model.imageio import open_image
from model.training.data import load_split, read_attributes
from model.training.evaluate import embed_pairs, main
from model.training.metrics import mean_average_precision


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic dataset of 40 test images and a random tiny checkpoint (seed 1: its global
    and local blocks rank differently)."""
    base = tmp_path_factory.mktemp("eval")
    data = synthetic_dataset(base / "data", seed=0, n_train=8, n_valid=8, n_test=40)
    ckpt = tiny_checkpoint(base / "tiny.pt", data, seed=1)
    return data, ckpt, read_attributes(data)


def _run(setup, tmp_path, *extra):
    data, ckpt, _ = setup
    out = tmp_path / "res.json"
    rc = main(["--data", str(data), "--checkpoint", str(ckpt), "--device", "cpu",
               "--batch-size", "7", "--json", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_cli_json_report(setup, tmp_path, capsys):
    data, ckpt, attrs = setup
    report = _run(setup, tmp_path)
    printed = capsys.readouterr().out
    split = load_split(data, "test")
    names = [a.name for a in attrs]

    assert report["split"] == "test" and report["checkpoint"] == str(ckpt)
    q_counts, c_counts = report["counts"]["queries"], report["counts"]["candidates"]
    assert sum(q_counts.values()) == len(split.queries)
    assert sum(c_counts.values()) == len(split.candidates)
    assert set(report["per_attribute"]) == {names[a] for _, a, _ in split.queries}
    assert all(0.0 <= v <= 100.0 for v in report["per_attribute"].values())
    weighted = sum(report["per_attribute"][n] * q_counts[n] for n in q_counts)
    assert report["overall"] == pytest.approx(weighted / sum(q_counts.values()))
    assert "overall" in printed and "MAP %" in printed
    for name in report["per_attribute"]:
        assert name in printed


def test_matches_direct_embedding(setup, tmp_path):
    """The CLI's batched, deduplicated embedding gives the MAP of a plain per-item loop."""
    data, ckpt, attrs = setup
    report = _run(setup, tmp_path, "--loc-limit", "0")
    emb = load_model(ckpt, device="cpu")
    split = load_split(data, "test")
    names = [a.name for a in attrs]

    def side(triples):
        vecs = np.stack([emb.embed([open_image(split.image_paths[i])], [names[a]])[0]
                         for i, a, _ in triples])
        return vecs, [t[1] for t in triples], [t[2] for t in triples]

    direct = mean_average_precision(*side(split.queries), *side(split.candidates),
                                    attr_names=names)
    assert report["overall"] == pytest.approx(direct.overall, abs=1e-6)
    assert report["per_attribute"] == pytest.approx(direct.per_attribute, abs=1e-6)


def test_embed_pairs_rows_match_embed(setup):
    data, ckpt, attrs = setup
    emb = load_model(ckpt, device="cpu")
    split = load_split(data, "test")
    triples = split.queries[:5]
    paths = [split.image_paths[i] for i, _, _ in triples]
    names = [attrs[a].name for _, a, _ in triples]
    got = embed_pairs(emb, paths, names, batch_size=2, workers=2)
    want = emb.embed([open_image(p) for p in paths], names)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_limit_and_localisation(setup, tmp_path):
    data, _, _ = setup
    report = _run(setup, tmp_path, "--limit", "2", "--loc-limit", "1")
    assert all(n <= 2 for n in report["counts"]["queries"].values())
    assert all(n <= 2 for n in report["counts"]["candidates"].values())
    if (data / "boxes.jsonl").exists():
        loc = report["localisation"]
        assert loc["counts"] and all(n == 1 for n in loc["counts"].values())
        assert all(v in (0.0, 100.0) for v in loc["per_attribute"].values())
        assert 0.0 <= loc["overall"] <= 100.0


def test_missing_checkpoint_is_a_clean_error(setup, tmp_path, capsys):
    data, _, _ = setup
    rc = main(["--data", str(data), "--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu"])
    assert rc == 1
    assert "error:" in capsys.readouterr().err


def test_module_entry_point(setup, tmp_path):
    data, ckpt, _ = setup
    out = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, "-m", "model.evaluate", "--data", str(data), "--checkpoint", str(ckpt),
         "--split", "test", "--device", "cpu", "--limit", "3", "--loc-limit", "0",
         "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "overall" in proc.stdout
    assert set(json.loads(out.read_text())) >= {"overall", "per_attribute", "counts",
                                                 "checkpoint", "split"}


@pytest.mark.parametrize("part", ["global", "local"])
def test_part_ranks_by_one_branch_block(setup, tmp_path, part):
    """--part global / local: the MAP of the fused embedding's leading / trailing block."""
    data, ckpt, attrs = setup
    report = _run(setup, tmp_path, "--loc-limit", "0", "--part", part)
    assert report["part"] == part
    emb = load_model(ckpt, device="cpu")
    split = load_split(data, "test")
    names = [a.name for a in attrs]
    g_dim = emb.config.global_branch.out_dim

    def side(triples):
        full = np.stack([emb.embed([open_image(split.image_paths[i])], [names[a]])[0]
                         for i, a, _ in triples])
        block = full[:, :g_dim] if part == "global" else full[:, g_dim:]
        return block, [t[1] for t in triples], [t[2] for t in triples]

    direct = mean_average_precision(*side(split.queries), *side(split.candidates),
                                    attr_names=names)
    assert report["overall"] == pytest.approx(direct.overall, abs=1e-6)
    full = _run(setup, tmp_path, "--loc-limit", "0")
    assert report["per_attribute"] != full["per_attribute"]   # a different ranking
