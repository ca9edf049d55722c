"""Tags: nearest prototype, calibrated confidence, ECE and temperature fitting."""

from __future__ import annotations

import numpy as np
import pytest

from model.prototypes import AttributePrototypes, Prototypes, ValuePrototype
from model.tagging import (
    Calibration,
    Tagger,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_table,
    softmax,
)


def test_ece_of_a_hand_computed_example():
    # bin (14/15, 1]: 4 at 0.95, 3 right -> |0.75 - 0.95|; bin (8/15, 9/15]: 2 at 0.55, 1 right
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    ok = np.array([1, 1, 1, 0, 1, 0], bool)
    assert expected_calibration_error(conf, ok) == pytest.approx((4 * 0.2 + 2 * 0.05) / 6)
    table = reliability_table(conf, ok)
    assert len(table) == 15 and sum(b.count for b in table) == 6
    assert (table[14].count, table[14].accuracy) == (4, 0.75)
    assert table[8].count == 2 and table[8].mean_confidence == pytest.approx(0.55)
    # a confidence of exactly 1/15 belongs to the first bin, 0 too
    assert reliability_table(np.array([0.0, 1 / 15]), np.array([0, 0], bool))[0].count == 2
    assert expected_calibration_error(np.zeros(0), np.zeros(0, bool)) == 0.0


def test_fit_temperature_recovers_the_generating_temperature_and_calibrates():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(20000, 4))
    true_t = 0.2
    probs = softmax(scores, true_t)
    labels = (probs.cumsum(axis=1) > rng.uniform(size=(len(probs), 1))).argmax(axis=1)
    t = fit_temperature(scores, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert negative_log_likelihood(scores, labels, t) <= \
        negative_log_likelihood(scores, labels, 1.0)
    conf = softmax(scores, t).max(axis=1)
    ok = softmax(scores, t).argmax(axis=1) == labels
    assert expected_calibration_error(conf, ok) < 0.02
    raw = softmax(scores, 1.0)
    assert expected_calibration_error(raw.max(axis=1), ok) > 0.1   # T = 1: underconfident


def _tagger(cal: Calibration | None = None) -> Tagger:
    protos = Prototypes({"neck": AttributePrototypes("neck", (
        ValuePrototype(0, "round", np.array([1, 0], np.float32), 5, "train"),
        ValuePrototype(3, "v", np.array([0, 1], np.float32), 4, "catalog")))})
    return Tagger(protos, cal)


def test_tags_are_the_nearest_prototype_and_labels_stay_labels():
    emb = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]], np.float32)
    col = _tagger().tag("neck", emb, labels=[-1, -1, 3])
    assert col.values.tolist() == [0, 3, 3] and col.names == ["round", "v", "v"]
    assert col.is_label.tolist() == [False, False, True] and col.confidences[2] == 1.0
    assert col.confidences[0] == pytest.approx(softmax(np.array([[0.9, 0.1]]), 1.0)[0, 0])
    sharp = _tagger(Calibration({"neck": 0.1}, "test")).tag("neck", emb[:1])
    assert sharp.confidences[0] > col.confidences[0]
    both = _tagger().tag_all({"neck": emb, "other": emb})
    assert list(both) == ["neck"]
    with pytest.raises(ValueError, match="2 labels for 3 items"):
        _tagger().tag("neck", emb, labels=[0, 0])


def test_calibration_dict_round_trip_and_bad_temperature():
    cal = Calibration({"neck": 0.05}, "data/synth valid")
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert cal.temperature("unknown") == 1.0
    with pytest.raises(ValueError, match="positive"):
        Calibration.from_dict({"temperatures": {"neck": 0.0}, "fitted_on": "x"})
