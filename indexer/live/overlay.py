"""Live changes over one index version: the journal's entries after the version's
`live.folded_seq`, as an immutable :class:`LiveView` that `CatalogIndex` merges into every
read (docs/ARCHITECTURE.md, "Live catalog changes").

:meth:`LiveOverlay.view` polls the journal (one small SQLite read) and applies new entries
before returning, so every search sees every change committed before it started, by any
process. Writes (:meth:`LiveOverlay.put`, :meth:`LiveOverlay.delete`) check and append under
SQLite's write lock, so concurrent writers on several replicas are totally ordered by seq.

The ``LiveView.merge_*`` methods are the one way a published version's answer (computed
without the rows the view hides) and the live items are combined.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.filters import FilterKey, Filters, filter_key, filter_sql
from indexer.items import Hit, Item, Rescore, metadata_json, ranked_candidates
from indexer.live.journal import Entry, Journal, JournalError
from indexer.tagger import ItemTagger
from indexer.tags import FacetCount, Tag, count_tags, value_key

log = logging.getLogger(__name__)

#: Rows of live items are LIVE_ROW0 + seq: never a FAISS id of the published version.
LIVE_ROW0 = 1 << 62

BaseRows = Callable[[list[str]], dict[str, int]]   # ids -> rows of those in the version
BaseVectors = Callable[[str, np.ndarray], np.ndarray]   # attribute, rows -> [len, D]


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """The journal beside the index and what one index version applies of it."""

    journal: str        # path of journal.sqlite
    folded_seq: int     # last journal seq the version contains
    applied_seq: int    # last journal seq applied on top of it
    pending: int        # changes not folded into a version yet
    live_items: int     # items served from the journal (put since the fold)
    changed_ids: int    # ids with a live change (put or delete) since the fold
    stale: bool         # the journal dropped changes this version needs


@dataclass(frozen=True)
class LiveItem:
    """A live item: its `Item` and its vectors by attribute (empty: not searchable)."""

    item: Item
    vectors: Mapping[str, np.ndarray]


def merge_hits(base: list[Hit], live: list[Hit], k: int) -> list[Hit]:
    """The best k of two ranked lists (ties: the published item first)."""
    if not live:
        return base[:k]
    return sorted(base + live, key=lambda h: -h.score)[:k]


@dataclass
class LiveView:
    """The live changes at one journal position (never mutated once published, except for
    its lazily built caches)."""

    applied: int                                  # last seq applied
    items: dict[str, LiveItem] = field(default_factory=dict)
    touched: frozenset[str] = frozenset()          # ids with a live entry (base rows hidden)
    hidden_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stale: bool = False                            # entries this view needs were dropped
    tagged: frozenset[str] = frozenset()           # attributes filters match by tag
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

    def matching(self, filters: Filters | None) -> frozenset[str] | None:
        """Ids of live items whose metadata matches `filters` (None: no filter), by the same
        SQL as the published items."""
        if not filters:
            return None
        key = filter_key(filters)
        with self._lock:
            hit = self._filters.get(key)
            if hit is not None:
                return hit
        where, args = filter_sql(key, self.tagged)
        con = sqlite3.connect(":memory:")
        try:
            con.execute("CREATE TABLE items (row INTEGER, id TEXT, metadata TEXT)")
            con.execute("CREATE TABLE tags (row INTEGER, attribute TEXT, value_key TEXT, "
                        "confidence REAL)")
            con.executemany("INSERT INTO items VALUES (?, ?, ?)",
                            ((li.item.row, i, metadata_json(li.item.metadata))
                             for i, li in self.items.items()))
            con.executemany("INSERT INTO tags VALUES (?, ?, ?, ?)",
                            ((li.item.row, a, value_key(t.value), t.confidence)
                             for li in self.items.values() for a, t in li.item.tags.items()))
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

    # -- what to ask the published version for ---------------------------------------------
    def base_rows(self, rows: Sequence[int]) -> list[int]:
        """Those `rows` that are published rows the view does not hide."""
        hidden = set(self.hidden_rows.tolist())
        return [r for r in rows if r < LIVE_ROW0 and r not in hidden]

    def base_ids(self, ids: Sequence[str]) -> list[str]:
        """Those `ids` without a live entry (the published version answers for them)."""
        return [i for i in ids if i not in self.touched]

    # -- merging a published answer with the live items --------------------------------------
    def merge_size(self, base: int, attribute: str | None = None) -> int:
        """A published count (of an attribute's vectors, or of items) with the live
        changes."""
        live = len(self.items) if attribute is None else len(self.matrix(attribute)[0])
        return base - len(self.hidden_rows) + live

    def merge_rows(self, base: dict[int, Item], rows: Sequence[int]) -> dict[int, Item]:
        """Items by row: the published ones (of `base_rows(rows)`) and the live ones."""
        if self:
            live = self.by_row()
            base.update((r, live[r]) for r in rows if r in live)
        return base

    def merge_ids(self, base: dict[str, Item], ids: Sequence[str]) -> dict[str, Item]:
        """Items by id: the published ones (of `base_ids(ids)`) and the live ones."""
        for i in ids:
            if i in self.items:
                base[i] = self.items[i].item
        return base

    def merge_page(self, total: int, page: list[Item], offset: int, limit: int
                   ) -> tuple[int, list[Item]]:
        """(count, page) of the published items the view does not hide, continued by the
        live items in the order they were put."""
        live = sorted((li.item for li in self.items.values()), key=lambda it: it.row)
        start = max(0, int(offset) - total)
        return total + len(live), page + live[start:start + int(limit) - len(page)]

    def merge_allowed(self, base: np.ndarray, filters: Filters) -> np.ndarray:
        """Published rows matching `filters`, without the hidden ones, plus the matching
        live items' rows, sorted."""
        if not self:
            return base
        ids = self.matching(filters) or frozenset()
        live = [li.item.row for i, li in self.items.items() if i in ids]
        return np.union1d(np.setdiff1d(base, self.hidden_rows), np.array(live, np.int64))

    def merge_facets(self, base: list[FacetCount], attribute: str, rows: Sequence[int] | None,
                     min_confidence: float) -> list[FacetCount]:
        """Published facet counts (without the hidden rows) plus the live items' (of
        `rows`, None: all of them)."""
        if not self.items:
            return base
        wanted = None if rows is None else {int(r) for r in rows if r >= LIVE_ROW0}
        return count_tags((li.item.tags.get(attribute) for li in self.items.values()
                           if wanted is None or li.item.row in wanted), min_confidence, base)

    def merge_embeddings(self, found: dict[str, Item], ids: Sequence[str],
                         attributes: Sequence[str], base_vectors: BaseVectors, dim: int
                         ) -> tuple[list[Item], dict[str, np.ndarray]]:
        """The items of `found` in the order of `ids` (live ones only when they have a
        vector for every attribute) and their vectors, [len(items), D] per attribute."""
        items = [found[i] for i in ids if i in found and (
            i not in self.items or all(a in self.items[i].vectors for a in attributes))]
        base = [n for n, it in enumerate(items) if it.row < LIVE_ROW0]
        rows = np.array([items[n].row for n in base], dtype=np.int64)
        vectors = {}
        for a in attributes:
            mat = np.zeros((len(items), dim), dtype=np.float32)
            if len(rows):
                mat[base] = base_vectors(a, rows)
            for n, it in enumerate(items):
                if it.row >= LIVE_ROW0:
                    mat[n] = self.items[it.id].vectors[a]
            vectors[a] = mat
        return items, vectors

    def merge_search(self, base: list[list[Hit]], attribute: str, q: np.ndarray, k: int,
                     filters: Filters | None) -> list[list[Hit]]:
        """Per query row of `q` [n, D]: the published top-k merged with the live items'
        (exact inner product)."""
        if not self.items:
            return base
        items, mat = self.matrix(attribute)
        ids = self.matching(filters)
        if ids is not None:
            keep = [n for n, it in enumerate(items) if it.id in ids]
            items, mat = [items[n] for n in keep], mat[keep]
        if not items or k <= 0:
            return [b[:k] for b in base]
        scores = q @ mat.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [merge_hits(b, [Hit(items[j], float(scores[n, j])) for j in top[n]], k)
                for n, b in enumerate(base)]

    def merge_many(self, base: list[Hit], weights: Mapping[str, float],
                   queries: Mapping[str, np.ndarray], k: int, filters: Filters | None,
                   rescore: Rescore | None = None) -> list[Hit]:
        """The published weighted-sum (or `rescore`) ranking merged with every live item
        searchable on all weighted attributes (and matching `filters`), scored exactly."""
        ids = self.matching(filters)
        found = [li for li in self.items.values()
                 if all(a in li.vectors for a in weights)
                 and (ids is None or li.item.id in ids)]
        if not found or k <= 0:
            return base[:k]
        stored = {a: np.stack([li.vectors[a] for li in found]) for a in weights}
        per_attr = {a: stored[a] @ queries[a] for a in weights}
        order, total = ranked_candidates(weights, per_attr, stored, k, rescore)
        live = [Hit(found[i].item, float(total[i]), {a: float(per_attr[a][i]) for a in weights})
                for i in order]
        return merge_hits(base, live, k)


@dataclass
class _Schema:
    attributes: list[str]
    dim: int
    model: str | None


class LiveOverlay:
    """The live changes of one journal over one index version (thread-safe)."""

    def __init__(self, journal: Journal, folded_seq: int, attributes: list[str], dim: int,
                 model: str | None, base_rows: BaseRows, tagger: ItemTagger | None = None,
                 tagged: frozenset[str] = frozenset()) -> None:
        self.journal = journal
        self.folded_seq = int(folded_seq)
        self._schema = _Schema(list(attributes), int(dim), model)
        self._base_rows = base_rows
        self._tagger = tagger               # tags the live items as the build tagged
        self._tagged = tagged               # what filters match by tag (the version's)
        self._tag_cache: dict[int, dict[str, Tag]] = {}   # seq -> the put's tags
        self._latest: dict[str, Entry] = {}        # id -> its last entry
        self._rows: dict[str, int] = {}            # touched ids in the version -> row
        self._view = LiveView(self.folded_seq, tagged=tagged)
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
        if stale and not self._view.stale:      # recorded below, so logged once
            log.warning("journal %s dropped changes this index version (folded seq %s) "
                        "still needs: reload the newer version", self.journal.db,
                        self.folded_seq)
        entries = Journal.read(con, applied) if state.last_seq > applied else []
        if not entries:      # nothing new to apply (or all of it dropped): the flag alone
            if stale != self._view.stale:
                self._view = self._rebuild(applied, stale)
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
            vectors = self._vectors(e)
            metadata = dict(e.metadata or {})
            item = Item(LIVE_ROW0 + e.seq, item_id, image, metadata,
                        self._tags(e.seq, vectors, metadata))
            items[item_id] = LiveItem(item, vectors)
        hidden = np.array(sorted(self._rows[i] for i in self._latest if i in self._rows),
                          dtype=np.int64)
        live_seqs = {e.seq for e in self._latest.values()}
        self._tag_cache = {s: t for s, t in self._tag_cache.items() if s in live_seqs}
        return LiveView(applied, items, frozenset(self._latest), hidden, stale, self._tagged)

    def _tags(self, seq: int, vectors: Mapping[str, np.ndarray],
              metadata: Mapping[str, object]) -> dict[str, Tag]:
        """A put's tags (made once per seq; none without vectors or prototypes)."""
        if self._tagger is None or not vectors:
            return {}
        if seq not in self._tag_cache:
            self._tag_cache[seq] = self._tagger.tags(
                {a: v[None, :] for a, v in vectors.items()}, [metadata])[0]
        return self._tag_cache[seq]

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

    @contextlib.contextmanager
    def _journal_write(self) -> Iterator[sqlite3.Connection]:
        """One journal write: the writers' lock, a transaction that starts caught up with the
        journal, the overlay caught up again after the commit; SQLite and file errors raise
        JournalError."""
        with self._write_lock:
            try:
                con = self._writer()
                with self.journal.transaction(con):
                    with self._lock:
                        self._catch_up(con)
                    yield con
                with self._lock:
                    self._catch_up(con)
            except (sqlite3.Error, OSError) as exc:
                raise JournalError(f"journal {self.journal.db}: {exc}") from exc

    def put(self, item_id: str, image: bytes, metadata: Mapping[str, object],
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
        with self._journal_write() as con:
            with self._lock:
                existed = self._exists(item_id)
            name, sha = self.journal.store_image(image)
            seq = Journal.append_put(con, item_id, name, sha, metadata, schema.model,
                                     schema.attributes, matrix)
        return seq, existed

    def delete(self, item_id: str) -> int | None:
        """Journal a delete; returns its seq, or None when no item has this id."""
        if not self.journal.exists() and not self._base_rows([item_id]):
            return None          # nothing to delete, and no journal to create for it
        with self._journal_write() as con:
            with self._lock:
                if not self._exists(item_id):
                    return None
            seq = Journal.append_delete(con, item_id)
        return seq

    def status(self) -> LiveStatus:
        """The journal's path and position, and what this version applies of it."""
        view = self.view()
        pending = 0
        with self._lock:
            if self._con is not None:
                try:
                    pending = Journal.pending(self._con, self.folded_seq)
                except sqlite3.Error:
                    pass
        return LiveStatus(journal=str(self.journal.db), folded_seq=self.folded_seq,
                          applied_seq=view.applied, pending=pending,
                          live_items=len(view.items), changed_ids=len(view.touched),
                          stale=view.stale)

    def close(self) -> None:
        with self._write_lock, self._lock:
            for con in (self._con, self._wcon):
                if con is not None:
                    con.close()
            self._con = self._wcon = None
