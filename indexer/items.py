"""The items table of an index version (`items.sqlite`): its schema, writing it, reading it,
and the `Item` and `Hit` every reader returns. Imports neither torch nor tqdm.

    items(row INTEGER PRIMARY KEY, id TEXT UNIQUE, image TEXT, metadata TEXT, sha256 TEXT)

    tags(row INTEGER, attribute TEXT, value TEXT, value_key TEXT, confidence REAL,
         source TEXT, PRIMARY KEY (row, attribute))      -- issue 22, indexer/tags.py

`row` is the item's FAISS id in every attribute's index; `metadata` a JSON object (sorted
keys); `sha256` the image file's hash (what `--update` compares). `tags` holds every item's
tag per tagged attribute (absent in an index built without tags); `value_key` is the value
trimmed and case-folded (what filters match), indexed with the attribute and confidence.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.filters import FilterKey, Filters, filter_key, filter_sql
from indexer.tags import FacetCount, Tag, TagSource, value_key

#: One stored tag: (row, attribute, value, confidence, source).
TagRow = tuple[int, str, str, float, TagSource]

ITEMS_DB = "items.sqlite"
ITEMS_SCHEMA = """
CREATE TABLE items (
    row INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    image TEXT NOT NULL,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL
)
"""

TAGS_SCHEMA = """
CREATE TABLE tags (
    row INTEGER NOT NULL,
    attribute TEXT NOT NULL,
    value TEXT NOT NULL,
    value_key TEXT NOT NULL,
    confidence REAL NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (row, attribute)
) WITHOUT ROWID
"""
TAGS_INDEX = "CREATE INDEX tags_by_value ON tags(attribute, value_key, confidence)"

#: One row to write: (row, id, image, metadata, sha256).
ItemRow = tuple[int, str, str, Mapping[str, object], str]

_CHUNK = 500           # ids or rows per `IN (...)` query
_FILTER_CACHE = 64     # filters whose matching rows are kept per opened table


@dataclass(frozen=True, slots=True)
class Item:
    """One indexed catalog item; `row` is its FAISS id (a live item's: LIVE_ROW0 + seq)."""

    row: int
    id: str
    image: str
    metadata: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    tags: Mapping[str, Tag] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: the item, its score and (search_many) its score per attribute."""

    item: Item
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)


#: Scores of N candidates from their stored vectors [N, D] per weighted attribute; -inf leaves
#: a candidate out (a "but with" query's ranking stage: service/values.py).
Rescore = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def ranked_candidates(weights: Mapping[str, float], similarities: Mapping[str, np.ndarray],
                      stored: Mapping[str, np.ndarray], k: int,
                      rescore: Rescore | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The order of the top ``k`` candidates and every candidate's score: the weighted sum of
    their per-attribute ``similarities``, or ``rescore`` of their ``stored`` vectors (its
    -inf ones left out of the order)."""
    if rescore is None:
        total = np.sum([weights[a] * similarities[a] for a in weights], axis=0)
        return np.argsort(-total, kind="stable")[:k], total
    total = np.asarray(rescore(stored), dtype=np.float64)
    order = np.argsort(-total, kind="stable")
    return order[np.isfinite(total[order])][:k], total


def metadata_json(metadata: Mapping[str, object]) -> str:
    """The stored form of an item's metadata (also the journal's)."""
    return json.dumps(dict(metadata), ensure_ascii=False, sort_keys=True)


# -- writing -----------------------------------------------------------------------------------
def _bulk_write(folder: Path, statements: Sequence[str], insert: str,
                rows: Iterable[tuple[object, ...]], after: Sequence[str] = ()) -> int:
    """Run `statements`, insert `rows` with `insert`, then `after`, into `folder/items.sqlite`
    without a journal, and fsync the file; returns the rows inserted."""
    path = folder / ITEMS_DB
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        for sql in statements:
            con.execute(sql)
        count = con.executemany(insert, rows).rowcount
        for sql in after:
            con.execute(sql)
        con.commit()
    finally:
        con.close()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return count


def write_items(folder: Path, rows: Iterable[ItemRow]) -> int:
    """Create `folder/items.sqlite` from (row, id, image, metadata, sha256) and fsync it;
    returns the count."""
    return _bulk_write(
        folder, [ITEMS_SCHEMA],
        "INSERT INTO items(row, id, image, metadata, sha256) VALUES (?, ?, ?, ?, ?)",
        ((int(r), i, img, metadata_json(meta), sha) for r, i, img, meta, sha in rows))


def write_tags(folder: Path, rows: Iterable[TagRow]) -> int:
    """Add the tags table to `folder/items.sqlite` (written by write_items) and fsync it;
    returns the count."""
    return _bulk_write(
        folder, [TAGS_SCHEMA],
        "INSERT INTO tags(row, attribute, value, value_key, confidence, source) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        ((int(r), a, v, value_key(v), float(c), s) for r, a, v, c, s in rows), [TAGS_INDEX])


def facet_sql(attribute: str, min_confidence: float, where: str = "1",
              args: Sequence[object] = ()) -> tuple[str, list[object]]:
    """The facet counts of one attribute over the `tags` rows matching `where`:
    (value, labelled, predicted) per value key, predictions at `min_confidence` or more."""
    return ("SELECT MIN(value), SUM(source = 'label'), SUM(source != 'label') FROM tags "
            f"WHERE attribute = ? AND confidence >= ? AND ({where}) "
            "GROUP BY value_key ORDER BY value_key",
            [attribute, float(min_confidence), *args])


def facet_counts(found: Iterable[tuple]) -> list[FacetCount]:
    """FacetCounts of facet_sql's rows."""
    return [FacetCount(str(v), int(lab), int(pred)) for v, lab, pred in found]


# -- reading -----------------------------------------------------------------------------------
def read_item_hashes(folder: str | os.PathLike[str]) -> dict[str, tuple[int, str]]:
    """id -> (row, sha256) of every item of an index version."""
    table = ItemsTable.open(folder)
    try:
        return table.hashes()
    finally:
        table.close()


class ItemsTable:
    """The items table of one version, opened read-only and immutable (thread-safe)."""

    def __init__(self, path: Path, con: sqlite3.Connection) -> None:
        self.path = path
        self._con = con
        self._lock = threading.Lock()
        self._count: int | None = None
        self._columns: frozenset[str] | None = None
        self._filtered: OrderedDict[FilterKey, np.ndarray] = OrderedDict()
        found = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                            "AND name = 'tags'").fetchall()
        self._tagged: frozenset[str] = frozenset(
            str(a) for (a,) in con.execute("SELECT DISTINCT attribute FROM tags")
        ) if found else frozenset()

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ItemsTable:
        """Open `folder/items.sqlite` (FileNotFoundError when absent, ValueError when it is
        not an items table)."""
        path = Path(folder) / ITEMS_DB
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                                  check_same_thread=False)
            con.execute("SELECT row, id, image, metadata, sha256 FROM items LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}: not a valid items database ({exc})") from None
        return cls(path, con)

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, tuple(args)).fetchall()

    def _items(self, where: str, args: Sequence[object]) -> list[Item]:
        rows = self._query(f"SELECT row, id, image, metadata FROM items WHERE {where}", args)
        tags = self._tags([int(r) for r, _, _, _ in rows])
        return [Item(int(r), str(i), str(img), json.loads(meta), tags.get(int(r), {}))
                for r, i, img, meta in rows]

    def _tags(self, rows: list[int]) -> dict[int, dict[str, Tag]]:
        """row -> attribute -> Tag of those `rows` (at most _CHUNK of them)."""
        if not self._tagged or not rows:
            return {}
        out: dict[int, dict[str, Tag]] = {}
        found = self._query("SELECT row, attribute, value, confidence, source FROM tags "
                            "WHERE row IN (SELECT value FROM json_each(?))", (json.dumps(rows),))
        for r, a, v, c, src in found:
            out.setdefault(int(r), {})[str(a)] = Tag(str(v), float(c), src)
        return out

    @property
    def tagged(self) -> frozenset[str]:
        """The attributes the items have tags for (empty: an index built without tags)."""
        return self._tagged

    def facets(self, attribute: str, rows: Sequence[int] | None = None,
               exclude: np.ndarray | None = None, min_confidence: float = 0.0
               ) -> list[FacetCount]:
        """Facet counts of `attribute` over `rows` (None: every item), without `exclude`."""
        if attribute not in self._tagged:
            return []
        clauses, args = [], []
        if rows is not None:
            clauses.append("row IN (SELECT value FROM json_each(?))")
            args.append(json.dumps([int(r) for r in rows]))
        if exclude is not None and len(exclude):
            clauses.append("row NOT IN (SELECT value FROM json_each(?))")
            args.append(json.dumps([int(r) for r in exclude]))
        sql, params = facet_sql(attribute, min_confidence, " AND ".join(clauses) or "1", args)
        return facet_counts(self._query(sql, params))

    def count(self) -> int:
        """Number of items."""
        if self._count is None:
            self._count = int(self._query("SELECT COUNT(*) FROM items")[0][0])
        return self._count

    def by_rows(self, rows: Iterable[int]) -> dict[int, Item]:
        """row -> item of those `rows` the table has."""
        return {it.row: it for it in self._where_in("row", [int(r) for r in rows])}

    def by_ids(self, ids: Iterable[str]) -> dict[str, Item]:
        """id -> item of those `ids` the table has."""
        return {it.id: it for it in self._where_in("id", [str(i) for i in ids])}

    def _where_in(self, column: str, values: Sequence[object]) -> list[Item]:
        """Items whose `column` is one of `values`, in chunks of SQLite's parameter limit."""
        out: list[Item] = []
        for s in range(0, len(values), _CHUNK):
            part = values[s:s + _CHUNK]
            out.extend(self._items(f"{column} IN ({','.join('?' * len(part))})", part))
        return out

    def page(self, offset: int, limit: int, exclude: np.ndarray | None = None) -> list[Item]:
        """Items in row order, without the rows `exclude`, from `offset` on (at most
        `limit`)."""
        hidden = json.dumps([] if exclude is None else [int(r) for r in exclude])
        return self._items("row NOT IN (SELECT value FROM json_each(?)) "
                           "ORDER BY row LIMIT ? OFFSET ?", (hidden, int(limit), int(offset)))

    def columns(self) -> frozenset[str]:
        """Every metadata key of the items (computed once)."""
        if self._columns is None:
            rows = self._query(
                "SELECT DISTINCT j.key FROM items, json_each(items.metadata) AS j")
            self._columns = frozenset(str(k) for (k,) in rows)
        return self._columns

    def matching_rows(self, filters: Filters) -> np.ndarray:
        """Rows whose metadata matches every filter (indexer/filters.py), sorted int64;
        the last few filters' answers are cached."""
        key = filter_key(filters)
        with self._lock:
            hit = self._filtered.get(key)
            if hit is not None:
                self._filtered.move_to_end(key)
                return hit
        where, args = filter_sql(key, self._tagged)
        rows = self._query(f"SELECT row FROM items WHERE {where} ORDER BY row", args)
        result = np.fromiter((r for (r,) in rows), dtype=np.int64, count=len(rows))
        with self._lock:
            self._filtered[key] = result
            if len(self._filtered) > _FILTER_CACHE:
                self._filtered.popitem(last=False)
        return result

    def hashes(self) -> dict[str, tuple[int, str]]:
        """id -> (row, sha256) of every item."""
        return {str(i): (int(r), str(s))
                for r, i, s in self._query("SELECT row, id, sha256 FROM items")}

    def close(self) -> None:
        with self._lock:
            self._con.close()
