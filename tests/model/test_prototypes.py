"""Value prototypes: the math, merging, label columns and the checkpoint's optional key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit.datasets import tiny_checkpoint

from model.checkpoint import load_network, read_checkpoint_file
from model.errors import CheckpointError, UnknownAttributeError
from model.prototypes import (
    AttributePrototypes,
    Prototypes,
    UnknownValueError,
    ValuePrototype,
    compute_prototypes,
    labels_from_names,
    merge_prototypes,
    read_prototypes,
    write_prototypes,
)
from model.tagging import Calibration


def _protos() -> Prototypes:
    emb = {"neck": np.array([[3, 4, 0], [0, 0, 2], [0, 0, 5], [1, 1, 1]], np.float32),
           "colour": np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], np.float32)}
    labels = {"neck": [0, 2, 2, -1], "colour": [1, 1, 0, 0]}
    return compute_prototypes(emb, labels, "train",
                              {"neck": ["round", "square", "v"], "colour": ["red", "blue"]})


def test_prototype_is_the_normalised_mean_of_the_labelled_embeddings():
    p = _protos()
    neck = p["neck"]
    assert [v.value for v in neck.values] == [0, 2]          # value 1: nobody carries it
    np.testing.assert_allclose(neck.get(0).vector, [0.6, 0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(neck.get("v").vector, [0, 0, 1], atol=1e-6)  # mean (0,0,3.5)
    assert neck.get(2).count == 2 and neck.get(0).count == 1   # the -1 row is left out
    assert neck.get(" V ").name == "v" and neck.get(0).source == "train"
    assert neck.matrix().shape == (2, 3) and neck.indices().tolist() == [0, 2]
    np.testing.assert_allclose(p["colour"].get("blue").vector, [1, 0, 0], atol=1e-6)
    with pytest.raises(UnknownValueError, match="square"):   # no item: no prototype
        neck.get("square")
    with pytest.raises(UnknownAttributeError):
        p["sleeve"]


def test_catalog_prototypes_win_value_by_value():
    base = _protos()
    cat = Prototypes({"neck": AttributePrototypes("neck", (
        ValuePrototype(2, "v", np.array([1, 0, 0], np.float32), 7, "catalog"),)),
        "hem": AttributePrototypes("hem", (
            ValuePrototype(0, "crop", np.array([0, 1, 0], np.float32), 3, "catalog"),))})
    m = merge_prototypes(base, cat)
    assert m["neck"].get(2).source == "catalog" and m["neck"].get(2).count == 7
    assert m["neck"].get(0).source == "train"
    assert m.names() == ["neck", "colour", "hem"]
    assert m.summary()["neck"] == {"round": {"count": 1, "source": "train"},
                                   "v": {"count": 7, "source": "catalog"}}


def test_label_column_by_value_name():
    assert labels_from_names(["V", "", None, " round "], ["round", "v"]).tolist() == [1, -1, -1, 0]
    with pytest.raises(ValueError, match="'boat'"):
        labels_from_names(["boat"], ["round", "v"])


def test_checkpoint_round_trip_with_and_without_prototypes(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "t.pt", [("neck", 3), ("colour", 2)])
    before = load_network(ckpt).state_dict()
    assert read_prototypes(ckpt) == (None, None)
    protos = _protos()
    cal = Calibration({"neck": 0.05, "colour": 0.5}, "somewhere valid")
    write_prototypes(ckpt, protos, cal)
    got, got_cal = read_prototypes(ckpt)
    assert got is not None and got_cal == cal
    for attr in protos.names():
        for a, b in zip(protos[attr].values, got[attr].values, strict=True):
            assert (a.value, a.name, a.count, a.source) == (b.value, b.name, b.count, b.source)
            np.testing.assert_array_equal(a.vector, b.vector)
    after = load_network(ckpt).state_dict()          # still loads, same weights
    assert all(torch.equal(before[k], after[k]) for k in before)
    write_prototypes(ckpt, protos)                    # without a calibration
    assert read_prototypes(ckpt)[1] is None


def test_bad_prototypes_entry_and_foreign_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "t.pt", [("neck", 3), ("colour", 2)])
    data = read_checkpoint_file(ckpt)
    data["prototypes"] = {"attributes": {"neck": {"values": [0]}}}
    torch.save(data, ckpt)
    with pytest.raises(CheckpointError, match="invalid 'prototypes' entry"):
        read_prototypes(ckpt)
    published = tmp_path / "published.pt"
    torch.save({"epoch": 1, "model": {}, "mAP": 0.0}, published)
    with pytest.raises(CheckpointError, match="project's checkpoint format"):
        write_prototypes(published, _protos())
