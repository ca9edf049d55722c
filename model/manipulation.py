"""Attribute manipulation by prototype composition (issue 22, item 5).

"Everything from this query, but these attributes set to these values": the query keeps its own
embedding in every other attribute's space and takes the target value's prototype
(:mod:`model.prototypes`) in the target attribute's space. An item scores
``sum_a w_a <q_a, x_a>`` over the attributes, with weight 1 for the kept attributes and
``target_weight`` for the set ones (the score that ``CatalogIndex.search_many`` ranks by).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import UnknownAttributeError
from .prototypes import Prototypes, ValuePrototype

# Weight of a set attribute against 1 for each kept one: the smallest whose target NDCG@10 on
# data/synth valid reaches 0.9 (docs/RESULTS.md, "Tags and attribute manipulation").
DEFAULT_TARGET_WEIGHT = 4.0


@dataclass(frozen=True)
class ManipulatedQuery:
    """Per-attribute query vectors and weights of a manipulated query."""

    vectors: dict[str, np.ndarray]
    weights: dict[str, float]
    targets: dict[str, ValuePrototype]


def manipulate(query: Mapping[str, np.ndarray], prototypes: Prototypes,
               targets: Mapping[str, int | str], target_weight: float = DEFAULT_TARGET_WEIGHT,
               attributes: Sequence[str] | None = None) -> ManipulatedQuery:
    """The reference's embeddings ``query`` (attr -> [D]) with ``targets`` (attr -> value index
    or name) replaced by their prototypes.

    ``attributes``: the attributes to rank by (default: every attribute of ``query``); each
    target must be one of them. Raises UnknownAttributeError / UnknownValueError.
    """
    if target_weight <= 0:
        raise ValueError(f"target_weight must be positive, got {target_weight}")
    names = list(attributes) if attributes is not None else list(query)
    missing = [a for a in names if a not in query]
    if missing:
        raise UnknownAttributeError(missing[0], list(query))
    protos: dict[str, ValuePrototype] = {}
    for attr, value in targets.items():
        if attr not in names:
            raise UnknownAttributeError(attr, names)
        protos[attr] = prototypes[attr].get(value)
    vectors = {a: (protos[a].vector if a in protos else np.asarray(query[a], np.float32))
               for a in names}
    weights = {a: (float(target_weight) if a in protos else 1.0) for a in names}
    return ManipulatedQuery(vectors, weights, protos)


def score(q: ManipulatedQuery, items: Mapping[str, np.ndarray]) -> np.ndarray:
    """``sum_a w_a <q_a, x_a>`` for N items (``items[a]``: [N, D]); float64 [N]."""
    total: np.ndarray | None = None
    for attr, w in q.weights.items():
        s = w * (np.asarray(items[attr], np.float32) @ q.vectors[attr]).astype(np.float64)
        total = s if total is None else total + s
    assert total is not None
    return total


__all__ = ["DEFAULT_TARGET_WEIGHT", "ManipulatedQuery", "manipulate", "score"]
