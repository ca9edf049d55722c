"""Prototype composition: the query keeps its other attributes, the target takes the prototype."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import UnknownAttributeError
from model.manipulation import (
    agreement_of,
    agreement_scores,
    kept_vectors,
    manipulate,
    same_item,
    score,
)
from model.prototypes import AttributePrototypes, Prototypes, UnknownValueError, ValuePrototype
from model.tagging import Calibration, Tagger

V_NECK = np.array([0.0, 1.0], np.float32)
PROTOS = Prototypes({"neckline": AttributePrototypes("neckline", (
    ValuePrototype(0, "round", np.array([1.0, 0.0], np.float32), 3, "train"),
    ValuePrototype(1, "v", V_NECK, 2, "catalog")))})
QUERY = {"neckline": np.array([1.0, 0.0], np.float32),
         "colour": np.array([0.6, 0.8], np.float32)}


def test_target_takes_the_prototype_and_the_rest_is_kept():
    q = manipulate(QUERY, PROTOS, {"neckline": "V"}, target_weight=2.0)
    np.testing.assert_array_equal(q.vectors["neckline"], V_NECK)
    np.testing.assert_array_equal(q.vectors["colour"], QUERY["colour"])
    assert q.weights == {"neckline": 2.0, "colour": 1.0}
    assert q.targets["neckline"].source == "catalog"
    items = {"neckline": np.array([[0, 1], [1, 0]], np.float32),
             "colour": np.array([[0.6, 0.8], [0.6, 0.8]], np.float32)}
    np.testing.assert_allclose(score(q, items), [2.0 + 1.0, 0.0 + 1.0], atol=1e-6)
    same = manipulate(QUERY, PROTOS, {"neckline": 1}, attributes=["neckline"])
    assert list(same.vectors) == ["neckline"]
    unembedded = manipulate({"colour": QUERY["colour"]}, PROTOS, {"neckline": "v"},
                            target_weight=2.0, attributes=["neckline", "colour"])
    np.testing.assert_array_equal(unembedded.vectors["neckline"], V_NECK)
    assert unembedded.weights == q.weights   # a target needs no embedding of its own
    with pytest.raises(UnknownAttributeError):   # ... but every kept attribute does
        manipulate({"colour": QUERY["colour"]}, PROTOS, {}, attributes=["neckline", "colour"])


def test_unknown_targets_are_refused():
    with pytest.raises(UnknownValueError, match="round, v"):
        manipulate(QUERY, PROTOS, {"neckline": "boat"})
    with pytest.raises(UnknownAttributeError):
        manipulate(QUERY, PROTOS, {"sleeve": "long"})
    with pytest.raises(UnknownAttributeError):
        manipulate(QUERY, PROTOS, {"colour": "red"})   # an attribute without prototypes
    with pytest.raises(ValueError, match="positive"):
        manipulate(QUERY, PROTOS, {"neckline": "v"}, target_weight=0)


# Two neckline prototypes and a query nearer "round" (cosine 0.8) than "v" (0.6).
ROUND = np.array([1.0, 0.0], np.float32)
NEAR_ROUND = np.array([0.8, 0.6], np.float32)
TWO = Prototypes({"neckline": AttributePrototypes("neckline", (
    ValuePrototype(0, "round", ROUND, 3, "train"),
    ValuePrototype(1, "v", V_NECK, 2, "train"))),
    "colour": AttributePrototypes("colour", (
        ValuePrototype(0, "red", np.array([0.0, 1.0], np.float32), 4, "train"),))})


def test_kept_vectors_mix_the_query_with_its_own_values_prototype():
    query = {"neckline": NEAR_ROUND, "colour": QUERY["colour"]}
    q = manipulate(query, TWO, {"colour": "red"}, target_weight=2.0, keep_mix=0.25)
    want = 0.25 * NEAR_ROUND + 0.75 * ROUND           # round is the nearest, not v
    np.testing.assert_allclose(q.vectors["neckline"], want / np.linalg.norm(want), atol=1e-6)
    assert np.linalg.norm(q.vectors["neckline"]) == pytest.approx(1.0)
    assert q.vectors["neckline"].dtype == np.float32
    assert q.weights == {"neckline": 1.0, "colour": 2.0}
    # the default mix is half and half, still unit norm
    half = manipulate(query, TWO, {"colour": "red"}).vectors["neckline"]
    np.testing.assert_allclose(half, (NEAR_ROUND + ROUND) / np.linalg.norm(NEAR_ROUND + ROUND),
                               atol=1e-6)
    # a kept attribute without prototypes keeps the query's own vector whatever the mix
    kept = manipulate(QUERY, PROTOS, {"neckline": "v"}, keep_mix=0.25)
    np.testing.assert_array_equal(kept.vectors["colour"], QUERY["colour"])


def test_keep_mix_one_is_the_querys_own_embedding():
    query = {"neckline": NEAR_ROUND, "colour": QUERY["colour"]}
    q = manipulate(query, TWO, {"colour": "red"}, target_weight=4.0, keep_mix=1.0)
    np.testing.assert_array_equal(q.vectors["neckline"], NEAR_ROUND)
    np.testing.assert_array_equal(q.vectors["colour"], TWO["colour"].get("red").vector)
    np.testing.assert_array_equal(kept_vectors(NEAR_ROUND[None, :], TWO["neckline"], 1.0),
                                  NEAR_ROUND[None, :])


def test_kept_vectors_batch_matches_one_at_a_time():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(5, 2)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    batch = kept_vectors(rows, TWO["neckline"], 0.5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    for row, got in zip(rows, batch, strict=True):
        one = manipulate({"neckline": row}, TWO, {}, keep_mix=0.5).vectors["neckline"]
        np.testing.assert_allclose(got, one, atol=1e-6)


@pytest.mark.parametrize("mix", [0.0, -0.5, 1.5, float("nan")])
def test_keep_mix_outside_zero_to_one_is_refused(mix):
    with pytest.raises(ValueError, match="keep_mix"):
        manipulate(QUERY, PROTOS, {"neckline": "v"}, keep_mix=mix)
    with pytest.raises(ValueError, match="keep_mix"):
        kept_vectors(NEAR_ROUND[None, :], TWO["neckline"], mix)


COLOURS = AttributePrototypes("colour", (
    ValuePrototype(0, "red", np.array([1.0, 0.0], np.float32), 4, "train"),
    ValuePrototype(1, "blue", np.array([0.0, 1.0], np.float32), 4, "train")))
BOTH = Prototypes({"neckline": PROTOS["neckline"], "colour": COLOURS})


def test_agreement_scores_by_hand():
    """Kept colour: cosine + agreement x P(same value); set neckline: target_weight x P(v);
    normalised by the weights (1 + agreement + target_weight)."""
    tagger = Tagger(BOTH, Calibration({"neckline": 0.5, "colour": 0.25}, "valid"))
    query = {"colour": np.array([0.8, 0.6], np.float32)}
    q = manipulate(query, BOTH, {"neckline": "v"}, attributes=["neckline", "colour"],
                   keep_mix=1.0)
    rank = agreement_of(q, query, tagger, agreement=2.0, target_weight=3.0)
    assert rank.targets == {"neckline": 1} and list(rank.reference) == ["colour"]
    items = {"neckline": np.array([[0.6, 0.8], [1.0, 0.0]], np.float32),
             "colour": np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)}

    def softmax(z, t):
        e = np.exp(np.asarray(z) / t)
        return e / e.sum()

    p_q = softmax([0.8, 0.6], 0.25)
    want = []
    for i in range(2):
        p_n, p_c = softmax(items["neckline"][i], 0.5), softmax(items["colour"][i], 0.25)
        want.append((float(items["colour"][i] @ query["colour"]) + 2.0 * float(p_c @ p_q)
                     + 3.0 * p_n[1]) / 6.0)
    np.testing.assert_allclose(agreement_scores(q, rank, items, tagger), want, rtol=1e-5)
    with pytest.raises(ValueError, match="agreement"):
        agreement_of(q, query, tagger, agreement=-1.0)


def test_agreement_prefers_an_item_that_shares_the_kept_value():
    """Two items equally V-necked: the one whose colour is the query's value (red) ranks first
    with agreement, although the other's colour vector (blue, just) is nearer the query's."""
    tagger = Tagger(BOTH, Calibration({"neckline": 0.1, "colour": 0.05}, "valid"))
    query = {"colour": np.array([0.72, 0.694], np.float32)}     # red, just
    near_blue = np.array([0.69, 0.7238], np.float32)
    red = np.array([0.8, 0.6], np.float32)
    assert list(tagger.tag("colour", np.stack([query["colour"], near_blue, red])).values) == \
        [0, 1, 0]
    items = {"neckline": np.array([[0, 1], [0, 1]], np.float32),
             "colour": np.stack([near_blue, red])}
    q = manipulate(query, BOTH, {"neckline": "v"}, attributes=["neckline", "colour"],
                   keep_mix=1.0)
    plain = agreement_scores(q, agreement_of(q, query, tagger, agreement=0.0), items, tagger)
    agreeing = agreement_scores(q, agreement_of(q, query, tagger), items, tagger)
    assert plain[0] > plain[1] and agreeing[1] > agreeing[0]


def test_same_item_is_every_kept_attribute_nearly_identical():
    query = {"colour": np.array([0.6, 0.8], np.float32), "neckline": np.array([1, 0], np.float32)}
    items = {"colour": np.array([[0.6, 0.8], [0.6, 0.8], [0.8, 0.6]], np.float32),
             "neckline": np.array([[1, 0], [0.9, 0.436], [1, 0]], np.float32)}
    assert same_item(query, items).tolist() == [True, False, False]
    assert same_item({}, items).tolist() == [False] * 3    # nothing kept: nothing to match
