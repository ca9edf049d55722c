"""Metadata filters as SQL over a JSON `metadata` column: one definition of "matches" for the
published items (items.sqlite) and the live items of the journal (an in-memory table)."""

from __future__ import annotations

from collections.abc import Mapping

Filters = Mapping[str, str | list[str]]
FilterKey = tuple[tuple[str, str | tuple[str, ...]], ...]


def filter_key(filters: Filters) -> FilterKey:
    """A hashable, order-independent form of `filters` (a list value means any of)."""
    return tuple(sorted((str(k), tuple(map(str, v)) if isinstance(v, list | tuple) else str(v))
                        for k, v in filters.items()))


def json_path(key: str) -> str:
    """The SQLite JSON path of a top-level metadata key."""
    return '$."' + key.replace('"', '\\"') + '"'


def filter_sql(key: FilterKey) -> tuple[str, list[str]]:
    """A WHERE clause over `metadata` (a JSON object) and its arguments: every filter must
    match; a value matches when the column, as text, equals it."""
    clauses: list[str] = []
    args: list[str] = []
    for k, v in key:
        values = list(v) if isinstance(v, tuple) else [v]
        marks = ",".join("?" * len(values))
        clauses.append(f"CAST(json_extract(metadata, ?) AS TEXT) IN ({marks})")
        args += [json_path(k), *values]
    return " AND ".join(clauses) or "1", args
