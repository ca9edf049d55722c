"""Live changes over one index version: the journal's entries after the version's
`live.folded_seq`, as an immutable :class:`LiveView` that `CatalogIndex` merges into every
read (docs/ARCHITECTURE.md, "Live catalog changes").

:meth:`LiveOverlay.view` polls the journal (one small SQLite read) and applies new entries
before returning, so every search sees every change committed before it started, by any
process. Writes (:meth:`LiveOverlay.put`, :meth:`LiveOverlay.delete`) check and append under
SQLite's write lock, so concurrent writers on several replicas are totally ordered by seq.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from indexer.filters import FilterKey, filter_key, filter_sql
from indexer.items import Item
from indexer.live.journal import Entry, Journal, JournalError

log = logging.getLogger(__name__)

#: Rows of live items are LIVE_ROW0 + seq: never a FAISS id of the published version.
LIVE_ROW0 = 1 << 62

BaseRows = Callable[[list[str]], dict[str, int]]   # ids -> rows of those in the version


@dataclass(frozen=True)
class LiveItem:
    """A live item: its `Item` and its vectors by attribute (empty: not searchable)."""

    item: Item
    vectors: Mapping[str, np.ndarray]


@dataclass
class LiveView:
    """The live changes at one journal position (never mutated once published, except for
    its lazily built caches)."""

    applied: int                                  # last seq applied
    items: dict[str, LiveItem] = field(default_factory=dict)
    touched: frozenset[str] = frozenset()          # ids with a live entry (base rows hidden)
    hidden_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stale: bool = False                            # entries this view needs were dropped
    _matrices: dict[str, tuple[list[Item], np.ndarray]] = field(default_factory=dict, repr=False)
    _filters: dict[FilterKey, frozenset[str]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __bool__(self) -> bool:
        return bool(self.touched)

    def by_row(self) -> dict[int, Item]:
        return {li.item.row: li.item for li in self.items.values()}

    def matrix(self, attribute: str) -> tuple[list[Item], np.ndarray]:
        """The searchable live items and their vectors [n, D] for one attribute."""
        with self._lock:
            hit = self._matrices.get(attribute)
            if hit is None:
                found = [li for li in self.items.values() if attribute in li.vectors]
                vecs = (np.stack([li.vectors[attribute] for li in found]) if found
                        else np.zeros((0, 0), np.float32))
                hit = self._matrices[attribute] = ([li.item for li in found], vecs)
            return hit

    def matching(self, filters: Mapping | None) -> frozenset[str] | None:
        """Ids of live items whose metadata matches `filters` (None: no filter), by the same
        SQL as the published items."""
        if not filters:
            return None
        key = filter_key(filters)
        with self._lock:
            hit = self._filters.get(key)
            if hit is not None:
                return hit
        where, args = filter_sql(key)
        con = sqlite3.connect(":memory:")
        try:
            con.execute("CREATE TABLE items (id TEXT, metadata TEXT)")
            con.executemany("INSERT INTO items VALUES (?, ?)",
                            ((i, _json(li.item.metadata))
                             for i, li in self.items.items()))
            found = frozenset(i for (i,) in con.execute(
                f"SELECT id FROM items WHERE {where}", args))
        finally:
            con.close()
        with self._lock:
            self._filters[key] = found
        return found

    def columns(self) -> frozenset[str]:
        return frozenset(k for li in self.items.values()
                         for k in li.item.metadata)


def _json(meta: dict) -> str:
    return json.dumps(meta, ensure_ascii=False, sort_keys=True)


@dataclass
class _Schema:
    attributes: list[str]
    dim: int
    model: str | None


class LiveOverlay:
    """The live changes of one journal over one index version (thread-safe)."""

    def __init__(self, journal: Journal, folded_seq: int, attributes: list[str], dim: int,
                 model: str | None, base_rows: BaseRows) -> None:
        self.journal = journal
        self.folded_seq = int(folded_seq)
        self._schema = _Schema(list(attributes), int(dim), model)
        self._base_rows = base_rows
        self._latest: dict[str, Entry] = {}        # id -> its last entry
        self._rows: dict[str, int] = {}            # touched ids in the version -> row
        self._view = LiveView(self.folded_seq)
        self._lock = threading.Lock()              # the view and the reading connection
        self._write_lock = threading.Lock()        # the writing connection (taken first)
        self._con: sqlite3.Connection | None = None
        self._wcon: sqlite3.Connection | None = None
        self._warned: set[str] = set()

    # -- reading -----------------------------------------------------------------------------
    def view(self) -> LiveView:
        """The changes committed up to now (polls the journal; keeps the last view when the
        journal cannot be read, and says so in the log)."""
        with self._lock:
            if self._con is None:
                if not self.journal.exists():
                    return self._view
                try:
                    self._con = self.journal.connect()
                except (JournalError, FileNotFoundError) as exc:
                    self._warn("open", f"live changes not readable: {exc}")
                    return self._view
            try:
                self._catch_up(self._con)
            except sqlite3.Error as exc:   # e.g. the tables of a journal being created
                self._warn("read", f"live changes not readable: {exc}")
            return self._view

    def _catch_up(self, con: sqlite3.Connection) -> None:
        """Apply the entries after the view's position (call with self._lock held)."""
        state = Journal.state(con)
        applied = self._view.applied
        stale = self._view.stale or state.dropped_upto > applied     # missed entries: sticky
        if stale and not self._view.stale:
            log.warning("journal %s dropped changes this index version (%s) still needs: "
                        "reload the newer version", self.journal.db, self.folded_seq)
        if state.last_seq <= applied:
            if stale != self._view.stale:
                self._view = self._rebuild(applied, stale)
            return
        entries = Journal.read(con, applied)
        if not entries:
            return
        new_ids = [e.id for e in entries if e.id not in self._latest]
        if new_ids:
            self._rows.update(self._base_rows(new_ids))
        for e in entries:
            self._latest[e.id] = e
        self._view = self._rebuild(entries[-1].seq, stale)

    def _rebuild(self, applied: int, stale: bool) -> LiveView:
        items = {}
        for item_id, e in self._latest.items():
            if e.op != "put":
                continue
            image = str(self.journal.images / e.image) if e.image else ""
            item = Item(LIVE_ROW0 + e.seq, item_id, image, dict(e.metadata or {}))
            items[item_id] = LiveItem(item, self._vectors(e))
        hidden = np.array(sorted(self._rows[i] for i in self._latest if i in self._rows),
                          dtype=np.int64)
        return LiveView(applied, items, frozenset(self._latest), hidden, stale)

    def _vectors(self, e: Entry) -> dict[str, np.ndarray]:
        schema = self._schema
        if e.vectors is None or e.vectors.shape[1] != schema.dim or (
                e.model and schema.model and e.model != schema.model):
            self._warn(f"model-{e.seq}", f"live item {e.id!r} (seq {e.seq}) was embedded by "
                       "another model: not searchable until the next `--update` folds it")
            return {}
        pos = {a: n for n, a in enumerate(e.attributes)}
        if any(a not in pos for a in schema.attributes):
            return {}
        return {a: e.vectors[pos[a]] for a in schema.attributes}

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    # -- writing -----------------------------------------------------------------------------
    def _writer(self) -> sqlite3.Connection:
        if self._wcon is None:
            self._wcon = self.journal.connect(create=True)
        return self._wcon

    def _exists(self, item_id: str) -> bool:
        e = self._latest.get(item_id)
        if e is not None:
            return e.op == "put"
        return bool(self._base_rows([item_id]))

    def put(self, item_id: str, image: bytes, metadata: dict,
            vectors: Mapping[str, np.ndarray]) -> tuple[int, bool]:
        """Journal a put of `item_id` (replacing any item with that id); returns (seq,
        whether it replaced one). Raises JournalError when the journal is not writable."""
        schema = self._schema
        missing = [a for a in schema.attributes if a not in vectors]
        if missing:
            raise ValueError(f"no vector for attribute(s) {missing}")
        matrix = np.stack([np.asarray(vectors[a], dtype=np.float32).reshape(-1)
                           for a in schema.attributes])
        if matrix.shape[1] != schema.dim or not np.isfinite(matrix).all():
            raise ValueError(f"vectors must be finite and of dimension {schema.dim}")
        with self._write_lock:
            try:
                con = self._writer()
                with self.journal.transaction(con):
                    with self._lock:
                        self._catch_up(con)
                        existed = self._exists(item_id)
                    name, sha = self.journal.store_image(image)
                    seq = Journal.append_put(con, item_id, name, sha, metadata, schema.model,
                                             schema.attributes, matrix)
                with self._lock:
                    self._catch_up(con)
            except (sqlite3.Error, OSError) as exc:
                raise JournalError(f"journal {self.journal.db}: {exc}") from exc
        return seq, existed

    def delete(self, item_id: str) -> int | None:
        """Journal a delete; returns its seq, or None when no item has this id."""
        if not self.journal.exists() and not self._base_rows([item_id]):
            return None          # nothing to delete, and no journal to create for it
        with self._write_lock:
            try:
                con = self._writer()
                with self.journal.transaction(con):
                    with self._lock:
                        self._catch_up(con)
                        if not self._exists(item_id):
                            return None
                    seq = Journal.append_delete(con, item_id)
                with self._lock:
                    self._catch_up(con)
            except (sqlite3.Error, OSError) as exc:
                raise JournalError(f"journal {self.journal.db}: {exc}") from exc
        return seq

    def status(self) -> dict:
        """The journal's path and position, and what this version applies of it."""
        view = self.view()
        out = {"journal": str(self.journal.db), "folded_seq": self.folded_seq,
               "applied_seq": view.applied, "live_items": len(view.items),
               "changed_ids": len(view.touched), "pending": 0, "stale": view.stale}
        with self._lock:
            if self._con is not None:
                try:
                    out["pending"] = Journal.pending(self._con, self.folded_seq)
                except sqlite3.Error:
                    pass
        return out

    def close(self) -> None:
        with self._write_lock, self._lock:
            for con in (self._con, self._wcon):
                if con is not None:
                    con.close()
            self._con = self._wcon = None


# -- ranking live items (exact inner product), merged with the published version's hits ------
Hit = tuple[Item, float]


def live_hits(view: LiveView, attribute: str, q: np.ndarray, k: int,
              filters: Mapping | None) -> list[list[Hit]]:
    """Top-k live items per query row of `q` [n, D] on one attribute (brute force)."""
    items, mat = view.matrix(attribute)
    ids = view.matching(filters)
    if ids is not None:
        keep = [n for n, it in enumerate(items) if it.id in ids]
        items, mat = [items[n] for n in keep], mat[keep]
    if not items or k <= 0:
        return [[] for _ in range(len(q))]
    scores = q @ mat.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(items[j], float(scores[i, j])) for j in top[i]] for i in range(len(q))]


def live_many(view: LiveView, weights: Mapping[str, float], queries: Mapping[str, np.ndarray],
              filters: Mapping | None) -> tuple[list[Item], np.ndarray, dict[str, np.ndarray]]:
    """Every live item searchable on all weighted attributes (and matching `filters`): the
    items, their weighted totals and per-attribute scores."""
    ids = view.matching(filters)
    found = [li for li in view.items.values()
             if all(a in li.vectors for a in weights)
             and (ids is None or li.item.id in ids)]
    if not found:
        return [], np.zeros(0, np.float32), {a: np.zeros(0, np.float32) for a in weights}
    per_attr = {a: np.stack([li.vectors[a] for li in found]) @ queries[a] for a in weights}
    total = sum(weights[a] * per_attr[a] for a in weights)
    return [li.item for li in found], np.asarray(total), per_attr


def merge_hits(base: list[Hit], live: list[Hit], k: int) -> list[Hit]:
    """The best k of two ranked lists (ties: the published item first)."""
    if not live:
        return base[:k]
    return sorted(base + live, key=lambda h: -h[1])[:k]
