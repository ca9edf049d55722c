"""Ranking on the index threads: top-k with optional grouping, re-ranking given candidates,
and the query vectors of a composed query. Plain functions of an index; no HTTP here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.filters import Filters
from indexer.items import Hit, Rescore

from .facets import tagged_attributes
from .grouping import Ranked, best_per_group, check_column, grouped
from .protocols import CatalogIndexLike

Fetch = Callable[[int], Sequence[Hit]]   # depth -> the top `depth` hits, best first


def top_hits(index: CatalogIndexLike, fetch: Fetch, k: int, *, attributes: Sequence[str],
             group_by: str | None, max_depth: int, exclude_id: str | None = None) -> Ranked:
    """The top ``k`` hits of ``fetch`` on ``attributes`` (without ``exclude_id``); with
    ``group_by`` the best hit of each of the top ``k`` groups, fetching deeper as needed."""
    if group_by is not None:
        check_column(group_by, group_columns(index))
        return grouped(fetch, k, group_by, index_limit(index, attributes), max_depth,
                       exclude_id).hits
    hits = fetch(k + (1 if exclude_id is not None else 0))
    ranked: Ranked = [(h, None) for h in hits if exclude_id is None or h.item.id != exclude_id]
    return ranked[:k]


def group_columns(index: CatalogIndexLike) -> frozenset[str]:
    """What group_by can name: the metadata columns and the tagged attributes."""
    return index.metadata_columns() | frozenset(tagged_attributes(index))


def single_fetch(index: CatalogIndexLike, attribute: str, vector: np.ndarray,
                 filters: Filters | None, with_scores: bool = False) -> Fetch:
    """Ranked hits on one attribute (``with_scores``: also the per-attribute scores)."""

    def fetch(depth: int) -> Sequence[Hit]:
        hits = index.search(attribute, vector[None, :], depth, filters)[0]
        if with_scores:
            return [dataclasses.replace(h, scores={attribute: h.score}) for h in hits]
        return hits

    return fetch


def weighted_fetch(index: CatalogIndexLike, weights: dict[str, float],
                   vectors: dict[str, np.ndarray], filters: Filters | None,
                   k: int, rescore: Rescore | None = None, pool: int = 100) -> Fetch:
    """Ranked hits by the weighted sum of per-attribute similarities, or by ``rescore`` of
    the candidates' stored vectors (a "but with" query: service/values.py). Candidates are
    each attribute's top max(10k, ``pool``); deeper fetches (for grouping) widen that to
    their depth."""

    def fetch(depth: int) -> Sequence[Hit]:
        return index.search_many(weights, vectors, depth, filters,
                                 candidates=max(10 * k, pool, depth), rescore=rescore)

    return fetch


def index_limit(index: CatalogIndexLike, attributes: Sequence[str]) -> int:
    """The most hits a query on these attributes can have."""
    return max(int(index.size(a)) for a in attributes)


def rerank(index: CatalogIndexLike, weights: dict[str, float],
           vectors: Mapping[str, np.ndarray], candidates: Sequence[str], *, single: bool,
           group_by: str | None = None) -> tuple[Ranked, list[str]]:
    """``candidates`` ordered by the weighted inner product of the query with their stored
    vectors (stable: ties keep the candidates' order), and the ids not in the catalog."""
    if group_by is not None:
        check_column(group_by, group_columns(index))
    attributes = list(weights)
    items, stored = index.embeddings(candidates, attributes)
    known = {item.id for item in items}
    unknown = [c for c in dict.fromkeys(candidates) if c not in known]
    if not items:
        return [], unknown
    per_attr = {a: stored[a] @ np.asarray(vectors[a], dtype=np.float32) for a in attributes}
    total = np.zeros(len(items), dtype=np.float64)
    for a in attributes:
        total += weights[a] * per_attr[a].astype(np.float64)
    order = np.argsort(-total, kind="stable")
    hits = [Hit(items[i], float(total[i]),
                {} if single else {a: float(per_attr[a][i]) for a in attributes})
            for i in order]
    if group_by is not None:
        return best_per_group(hits, group_by, len(hits)), unknown
    return [(h, None) for h in hits], unknown


@dataclass
class Reference:
    """A resolved reference of a composed query: attribute, normalised weight, vector."""

    attribute: str
    weight: float
    vector: np.ndarray


def combine(references: Sequence[Reference]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-attribute weights and query vectors of a composed query.

    sum_r w_r <q_r, x_attr(r)> = sum_a W_a <u_a, x_a> with W_a the summed weight of the
    references on attribute a and u_a their weight-averaged query vector; one reference on
    an attribute gives u_a = its own vector exactly.
    """
    groups: dict[str, list[Reference]] = {}
    for ref in references:
        if ref.weight > 0:
            groups.setdefault(ref.attribute, []).append(ref)
    weights: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for attribute, refs in groups.items():
        weights[attribute] = sum(r.weight for r in refs)
        if len(refs) == 1:
            vectors[attribute] = np.asarray(refs[0].vector, dtype=np.float32)
        else:
            mixed = sum(np.float64(r.weight) * np.asarray(r.vector, dtype=np.float64)
                        for r in refs) / weights[attribute]
            vectors[attribute] = np.asarray(mixed, dtype=np.float32)
    return weights, vectors
