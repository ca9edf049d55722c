"""Prototype composition: the query keeps its other attributes, the target takes the prototype."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import UnknownAttributeError
from model.manipulation import manipulate, score
from model.prototypes import AttributePrototypes, Prototypes, UnknownValueError, ValuePrototype

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


def test_unknown_targets_are_refused():
    with pytest.raises(UnknownValueError, match="round, v"):
        manipulate(QUERY, PROTOS, {"neckline": "boat"})
    with pytest.raises(UnknownAttributeError):
        manipulate(QUERY, PROTOS, {"sleeve": "long"})
    with pytest.raises(UnknownAttributeError):
        manipulate(QUERY, PROTOS, {"colour": "red"})   # an attribute without prototypes
    with pytest.raises(ValueError, match="positive"):
        manipulate(QUERY, PROTOS, {"neckline": "v"}, target_weight=0)
