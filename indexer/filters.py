"""Filters as SQL: one definition of "matches" for the published items (items.sqlite) and the
live items of the journal (an in-memory table of the same shape).

A filter on a metadata column matches when the column, as text, equals the value (a list
value: any of). A filter on a *tagged* attribute (one the index has tags for, indexer/tags.py)
matches an item's tag instead: its own label, or a prediction whose confidence is at least
the filters' `min_confidence` (`TagFilters`; a plain mapping uses DEFAULT_MIN_CONFIDENCE);
tag values match trimmed and case-insensitive.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from indexer.tags import value_key

Filters = Mapping[str, str | list[str]]
#: (sorted (key, value or values) pairs, min_confidence): hashable and order-independent.
FilterKey = tuple[tuple[tuple[str, str | tuple[str, ...]], ...], float]

#: Confidence a predicted tag needs to match a filter when the filters do not say.
DEFAULT_MIN_CONFIDENCE = 0.5


class TagFilters(Mapping[str, str | list[str]]):
    """Filters with the least confidence a predicted tag needs to match them."""

    def __init__(self, filters: Filters,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> None:
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {min_confidence}")
        self._filters = dict(filters)
        self.min_confidence = float(min_confidence)

    def __getitem__(self, key: str) -> str | list[str]:
        return self._filters[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._filters)

    def __len__(self) -> int:
        return len(self._filters)

    def __repr__(self) -> str:
        return f"TagFilters({self._filters!r}, min_confidence={self.min_confidence})"


def min_confidence_of(filters: Filters) -> float:
    """The confidence a prediction needs to match `filters`."""
    return filters.min_confidence if isinstance(filters, TagFilters) else DEFAULT_MIN_CONFIDENCE


def filter_key(filters: Filters) -> FilterKey:
    """A hashable, order-independent form of `filters` (a list value means any of)."""
    pairs = tuple(sorted((str(k), tuple(map(str, v)) if isinstance(v, list | tuple) else str(v))
                         for k, v in filters.items()))
    return pairs, min_confidence_of(filters)


def json_path(key: str) -> str:
    """The SQLite JSON path of a top-level metadata key."""
    return '$."' + key.replace('"', '\\"') + '"'


def filter_sql(key: FilterKey, tagged: Collection[str] = ()) -> tuple[str, list[object]]:
    """A WHERE clause over a table with `row` and `metadata` (a JSON object) beside a `tags`
    table (row, attribute, value_key, confidence), and its arguments: every filter must
    match; keys in `tagged` match tags, the others metadata."""
    pairs, min_confidence = key
    clauses: list[str] = []
    args: list[object] = []
    for k, v in pairs:
        values = list(v) if isinstance(v, tuple) else [v]
        if k in tagged:
            keys = sorted({value_key(x) for x in values})
            clauses.append(f"row IN (SELECT row FROM tags WHERE attribute = ? AND value_key IN "
                           f"({','.join('?' * len(keys))}) AND confidence >= ?)")
            args += [k, *keys, min_confidence]
        else:
            clauses.append(f"CAST(json_extract(metadata, ?) AS TEXT) IN "
                           f"({','.join('?' * len(values))})")
            args += [json_path(k), *values]
    return " AND ".join(clauses) or "1", args
