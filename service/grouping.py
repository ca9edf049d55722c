"""Grouping results by a metadata column or a tagged attribute (its tag's value, label or
prediction at any confidence): the best item per group, k groups.

A ranked fetch is repeated with a growing depth (x4 each time) until it holds ``k`` distinct
groups, the index has no more items for the query (a fetch returned fewer hits than asked),
or ``max_depth`` hits were scanned (``ASEN_GROUP_MAX_DEPTH``, a bound on one request's work).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from indexer.items import Hit

from .errors import ApiError

#: first fetch depth: this many hits per wanted group (most groups hold a few items)
FIRST_DEPTH_PER_GROUP = 4
GROWTH = 4

Ranked = list[tuple[Hit, str | None]]   # hits with their group value (None: no grouping)


@dataclass
class Grouped:
    """The best hit of each of the first groups, with its group value, and the depth used."""

    hits: Ranked
    depth: int


def group_value(metadata: Mapping[str, object] | None, column: str) -> str | None:
    """The group of an item: its column value as text (None when it lacks the column)."""
    value = (metadata or {}).get(column)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def check_column(column: str, columns: Collection[str]) -> str:
    """The column if items have it, else a 422 listing the known ones."""
    if column not in columns:
        valid = sorted(columns)
        raise ApiError(422, "unknown_column",
                       f"unknown metadata column {column!r} for group_by; "
                       f"valid columns: {', '.join(valid)}",
                       details={"group_by": column, "valid": valid})
    return column


def best_per_group(hits: Sequence[Hit], column: str, k: int,
                   exclude_id: str | None = None) -> Ranked:
    """The first (best) hit of each group, in rank order, at most ``k`` of them."""
    seen: set[tuple[str, str]] = set()
    out: Ranked = []
    for hit in hits:
        item = hit.item
        if exclude_id is not None and item.id == exclude_id:
            continue
        tag = item.tags.get(column)
        value = tag.value if tag is not None else group_value(item.metadata, column)
        key = ("value", value) if value is not None else ("item", item.id)
        if key in seen:
            continue
        seen.add(key)
        out.append((hit, value))
        if len(out) == k:
            break
    return out


def grouped(fetch: Callable[[int], Sequence[Hit]], k: int, column: str, limit: int,
            max_depth: int, exclude_id: str | None = None) -> Grouped:
    """Fetch ranked hits ever deeper until ``k`` groups are found or nothing is left.

    ``fetch(depth)`` returns the top ``depth`` hits best first; ``limit`` is the most it can
    return (the index size); ``max_depth`` bounds the scan (at least ``k`` + 1 is kept).
    """
    ceiling = max(1, min(limit, max(max_depth, k + 1)))
    depth = min(ceiling, max(FIRST_DEPTH_PER_GROUP * k, 32))
    while True:
        hits = fetch(depth)
        out = best_per_group(hits, column, k, exclude_id)
        if len(out) >= k or len(hits) < depth or depth >= ceiling:
            return Grouped(out, depth)
        depth = min(ceiling, depth * GROWTH)
