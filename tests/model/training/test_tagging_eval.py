"""Prototypes into a checkpoint and `python -m model.evaluate --task tagging|manipulation`
on a small synthetic dataset with a tiny random model (real files, the real CLI entry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from testkit.datasets import read_rows, synthetic_dataset, tiny_checkpoint, write_rows

from model.checkpoint import load_network
from model.prototypes import read_prototypes
from model.training import prototype_fit
from model.training.evaluate import main as evaluate_main
from model.training.synth import ATTRIBUTES
from model.training.tagging_eval import knn_predict


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = synthetic_dataset(tmp_path_factory.mktemp("tag") / "data", seed=3, n_train=18,
                             n_valid=12, n_test=24, size=64)
    # the test split's labels vary in two attributes only, so that manipulation targets exist
    rows = read_rows(root / "catalog.csv")
    for i, row in enumerate(r for r in rows if r["split"] == "test"):
        for j, a in enumerate(ATTRIBUTES):
            row[a.name] = a.values[(i >> j) & 1 if j < 2 else 0]
    write_rows(root / "catalog.csv", rows)
    return root


@pytest.fixture(scope="module")
def ckpt(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", data, seed=1)
    assert prototype_fit.main(["--checkpoint", str(path), "--data", str(data)]) == 0
    return path


def test_prototypes_stored_from_the_training_labels(ckpt: Path, data: Path):
    protos, cal = read_prototypes(ckpt)
    assert protos is not None and cal is not None
    assert protos.names() == [a.name for a in ATTRIBUTES]
    assert all(sum(v.count for v in protos[a].values) == 18 for a in protos.names())
    assert protos["neckline"].values[0].source == "train"
    assert set(cal.temperatures) == set(protos.names()) and "valid split" in cal.fitted_on
    load_network(ckpt)   # still an ordinary checkpoint


def test_tagging_task(ckpt: Path, data: Path, tmp_path: Path, capsys):
    out = tmp_path / "tag.json"
    assert evaluate_main(["--task", "tagging", "--data", str(data), "--checkpoint", str(ckpt),
                          "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["per_attribute"]) == {a.name for a in ATTRIBUTES}
    assert rep["overall"]["n"] == 24 * len(ATTRIBUTES)       # every image, every attribute
    assert len(rep["reliability"]) == 15
    assert rep["prototypes"].startswith("the checkpoint's prototypes; calibrated on")
    assert "reliability" in capsys.readouterr().out


def test_manipulation_task(ckpt: Path, data: Path, tmp_path: Path):
    out = tmp_path / "manip.json"
    assert evaluate_main(["--task", "manipulation", "--data", str(data), "--checkpoint",
                          str(ckpt), "--target-weights", "1,2", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    # 24 references x 2 attributes whose other value exists (the other 4 never vary)
    assert rep["queries"] == 48
    assert rep["queries_per_attribute"]["sleeve_length"] == 24
    assert set(rep["methods"]) == {  # the weights at the default keep_mix, and the old default
        "image", "tag-filter", "prototype mix=0.5 w=1", "prototype mix=0.5 w=2",
        "prototype mix=1 w=4", "prototype-prob mix=0.5 w=1", "prototype-prob mix=0.5 w=2",
        "prototype-prob mix=1 w=4", "agreement mix=0.5 b=2.5 w=8"}
    assert rep["keep_mix"] == 0.5 and rep["target_weights"] == [1.0, 2.0]
    assert {"hit@10", "hit@30", "ndcg@10/target", "ndcg@30/others"} <= set(
        rep["methods"]["image"]["overall"])


def test_clear_errors(data: Path, tmp_path: Path, capsys):
    bare = tiny_checkpoint(tmp_path / "bare.pt", data)
    assert evaluate_main(["--task", "tagging", "--data", str(data), "--checkpoint",
                          str(bare)]) == 1
    assert "keeps no value prototypes" in capsys.readouterr().err
    assert evaluate_main(["--task", "manipulation", "--data", str(data), "--checkpoint",
                          str(bare), "--target-weight", "-1"]) == 1
    assert "positive" in capsys.readouterr().err
    assert evaluate_main(["--task", "manipulation", "--data", str(data), "--checkpoint",
                          str(bare), "--keep-mix", "1.5"]) == 1
    assert "keep_mix must be in (0, 1]" in capsys.readouterr().err
    assert evaluate_main(["--task", "tagging", "--data", str(data), "--checkpoint",
                          str(bare), "--knn", "3"]) == 2      # kNN needs --reference
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--task", "nope"])
    assert exc.value.code == 2


def test_knn_vote_is_similarity_weighted():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1, -1])            # the unlabelled row never votes
    queries = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4]], np.float32)
    assert knn_predict(train, labels, queries, 2).tolist() == [0, 1, 0]
    # k=3 at (0.6, 0.4): 0.6 + 0.56 for value 0 against 0.44 for value 1
    assert knn_predict(train, labels, queries[2:], 3).tolist() == [0]
