"""Read a published index: the API the search service uses (docs/ARCHITECTURE.md).

`CatalogIndex.open(INDEX_DIR)` resolves the INDEX_DIR symlink once and reads every file from
that one version, so a concurrent rebuild (which swaps the link) never mixes versions. The
live changes of the journal beside INDEX_DIR (indexer/journal.py) are merged into every read:
each call polls the journal first (indexer/overlay.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from indexer.build.faiss_index import IndexSpec, prepare_reader, reconstruct
from indexer.build.writer import ITEMS_DB
from indexer.filters import filter_key, filter_sql
from indexer.items import Item
from indexer.live.journal import Journal
from indexer.live.overlay import LIVE_ROW0, LiveOverlay, LiveView, live_hits, live_many, merge_hits
from indexer.manifest import Manifest

BRUTE_FORCE_MAX = 20_000   # filtered searches over at most this many rows are exact scans
_FILTER_CACHE = 64
EXCLUDE_DEEPEN_MAX = 1024  # fewer rows hidden by live changes: search that much deeper


def read_item_hashes(folder: str | os.PathLike) -> dict[str, tuple[int, str]]:
    """id -> (row, sha256) of every item of an index version."""
    con = _connect(Path(folder))
    try:
        return {i: (r, s) for r, i, s in con.execute("SELECT row, id, sha256 FROM items")}
    finally:
        con.close()


def _connect(folder: Path) -> sqlite3.Connection:
    path = folder / ITEMS_DB
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True,
                              check_same_thread=False)
        con.execute("SELECT row, id, image, metadata, sha256 FROM items LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path}: not a valid items database ({exc})") from None
    return con


class CatalogIndex:
    """One immutable index version (items, per-attribute FAISS indexes, search) with the
    live changes of its journal merged into every read (indexer/overlay.py)."""

    def __init__(self, root: Path, manifest: Manifest, con: sqlite3.Connection,
                 indexes: dict[str, faiss.Index], specs: dict[str, IndexSpec],
                 journal: Journal | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self._con = con
        self._lock = threading.Lock()
        self._indexes = indexes
        self._specs = specs
        self._filter_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._columns: frozenset[str] | None = None
        self._live = LiveOverlay(journal or Journal.of(root), manifest.live_folded_seq,
                                 manifest.attribute_names, manifest.model.dim,
                                 manifest.model.sha256, self._base_rows)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike, journal: Journal | None = None) -> CatalogIndex:
        """Open the version INDEX_DIR points to now (FileNotFoundError / ValueError if bad).

        `journal`: the live-changes journal (default: the one beside INDEX_DIR, found from
        INDEX_DIR or from a version folder; absent is fine: no live changes)."""
        root = Path(os.path.realpath(index_dir))
        if not root.is_dir():
            raise FileNotFoundError(f"no index at {index_dir}")
        manifest = Manifest.read(root)
        dim = manifest.model.dim
        con = _connect(root)
        indexes, specs = {}, {}
        try:
            for attr in manifest.attributes:
                info = attr.index
                spec = IndexSpec(info.type, dict(info.params))
                path = root / info.file
                if not path.is_file():
                    raise FileNotFoundError(f"{path} not found")
                try:
                    index = faiss.read_index(str(path), spec.kind.read_flags)
                except RuntimeError as exc:
                    raise ValueError(f"{path}: unreadable FAISS index ({exc})") from None
                if index.d != dim or index.ntotal != info.ntotal:
                    raise ValueError(f"{path}: dimension or size differs from the manifest")
                prepare_reader(index, spec)
                indexes[attr.name], specs[attr.name] = index, spec
        except BaseException:
            con.close()
            raise
        return cls(root, manifest, con, indexes, specs, journal or Journal.of(index_dir))

    # -- metadata --------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.manifest.index_version

    @property
    def attributes(self) -> list[str]:
        return self.manifest.attribute_names

    @property
    def dim(self) -> int:
        return self.manifest.model.dim

    def _index(self, attribute: str) -> faiss.Index:
        try:
            return self._indexes[attribute]
        except KeyError:
            raise KeyError(f"unknown attribute {attribute!r}; "
                           f"valid: {', '.join(self.attributes)}") from None

    def set_search_params(self, attribute: str, **params: int) -> None:
        """Change an attribute's search-time knobs in this process only (e.g. `nprobe`,
        `k_factor` of `ivfpq_refine`, `efSearch` of `hnsw`): the recall/latency trade-off
        without a rebuild. The manifest keeps the built values; `indexer --update
        --k-factor F` records new ones."""
        index = self._index(attribute)
        spec = self._specs[attribute]
        unknown = set(params) - spec.kind.search_keys
        if unknown:
            raise ValueError(f"{spec.type} has no search parameter {', '.join(sorted(unknown))}"
                             f"; known: {', '.join(sorted(spec.kind.search_keys)) or 'none'}")
        new = {**spec.params, **{k: int(v) for k, v in params.items()}}
        with self._lock:
            spec.kind.tune(index, new)
            self._specs[attribute] = IndexSpec(spec.type, new)

    def size(self, attribute: str) -> int:
        """Number of searchable vectors of an attribute (live changes included)."""
        index = self._index(attribute)
        view = self._live.view()
        return int(index.ntotal) - len(view.hidden_rows) + len(view.matrix(attribute)[0])

    def __len__(self) -> int:
        view = self._live.view()
        with self._lock:
            base = int(self._con.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        return base - len(view.hidden_rows) + len(view.items)

    # -- items of the published version ------------------------------------------------------
    def _items(self, where: str, args: tuple) -> list[Item]:
        with self._lock:
            rows = self._con.execute(
                f"SELECT row, id, image, metadata FROM items WHERE {where}", args).fetchall()
        return [Item(r, i, img, json.loads(meta)) for r, i, img, meta in rows]

    def _base_by_row(self, rows: list[int]) -> dict[int, Item]:
        out: dict[int, Item] = {}
        for s in range(0, len(rows), 500):
            part = rows[s:s + 500]
            marks = ",".join("?" * len(part))
            out.update((it.row, it) for it in self._items(f"row IN ({marks})", tuple(part)))
        return out

    def _base_by_id(self, ids: list[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        for s in range(0, len(ids), 500):
            part = tuple(ids[s:s + 500])
            out.update((it.id, it) for it in self._items(f"id IN ({','.join('?' * len(part))})",
                                                         part))
        return out

    def _base_rows(self, ids: list[str]) -> dict[str, int]:
        """id -> row of those `ids` the published version has (the overlay's lookup)."""
        return {i: it.row for i, it in self._base_by_id(list(ids)).items()}

    # -- items (live changes merged) ---------------------------------------------------------
    @property
    def live(self) -> LiveView:
        """The live changes merged into reads now (polls the journal)."""
        return self._live.view()

    def items_by_row(self, rows: list[int]) -> dict[int, Item]:
        """Items of the given FAISS ids (or live rows, >= LIVE_ROW0)."""
        view = self._live.view()
        rows = [int(r) for r in rows]
        hidden = set(view.hidden_rows.tolist())
        out = self._base_by_row([r for r in rows if r < LIVE_ROW0 and r not in hidden])
        if view:
            live = view.by_row()
            out.update((r, live[r]) for r in rows if r in live)
        return out

    def list_items(self, offset: int, limit: int) -> tuple[int, list[Item]]:
        """(total item count, one page of items): the published version's in row order,
        then the live ones in the order they were put."""
        view = self._live.view()
        hidden = json.dumps(view.hidden_rows.tolist())
        with self._lock:
            base = int(self._con.execute("SELECT COUNT(*) FROM items").fetchone()[0])
            rows = self._con.execute(
                "SELECT row, id, image, metadata FROM items WHERE row NOT IN "
                "(SELECT value FROM json_each(?)) ORDER BY row LIMIT ? OFFSET ?",
                (hidden, int(limit), int(offset))).fetchall()
        base -= len(view.hidden_rows)
        page = [Item(r, i, img, json.loads(meta)) for r, i, img, meta in rows]
        live = sorted((li.item for li in view.items.values()), key=lambda it: it.row)
        start = max(0, int(offset) - base)
        page += live[start:start + int(limit) - len(page)]
        return base + len(live), page

    def get(self, item_id: str) -> Item | None:
        """The item with this catalog id, or None."""
        return self.items_by_id([item_id]).get(str(item_id))

    def items_by_id(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """Items of the given catalog ids (ids not in the index are absent)."""
        return self._by_id(list(dict.fromkeys(str(i) for i in item_ids)), self._live.view())

    def _by_id(self, ids: list[str], view: LiveView) -> dict[str, Item]:
        out = self._base_by_id([i for i in ids if i not in view.touched])
        for i in ids:
            if i in view.items:
                out[i] = view.items[i].item
        return out

    def embeddings(self, item_ids: Sequence[str], attributes: Sequence[str]
                   ) -> tuple[list[Item], dict[str, np.ndarray]]:
        """The items among `item_ids` (first occurrences, in order; unknown ids left out)
        and their stored vectors per attribute, [len(items), D] float32 (float16-exact for
        ivfpq_refine, the PQ approximation for ivfpq)."""
        indexes = {a: self._index(a) for a in attributes}
        view = self._live.view()
        ids = list(dict.fromkeys(map(str, item_ids)))
        found = self._by_id(ids, view)
        items = [found[i] for i in ids if i in found and (
            i not in view.items or all(a in view.items[i].vectors for a in attributes))]
        base = [n for n, it in enumerate(items) if it.row < LIVE_ROW0]
        rows = np.array([items[n].row for n in base], dtype=np.int64)
        vectors = {}
        for a, index in indexes.items():
            mat = np.zeros((len(items), self.dim), dtype=np.float32)
            if len(rows):
                mat[base] = index.reconstruct_batch(rows)
            for n, it in enumerate(items):
                if it.row >= LIVE_ROW0:
                    mat[n] = view.items[it.id].vectors[a]
            vectors[a] = mat
        return items, vectors

    def metadata_columns(self) -> frozenset[str]:
        """Every metadata key of the items (computed once per opened version, plus the
        live items')."""
        view = self._live.view()
        with self._lock:
            if self._columns is None:
                rows = self._con.execute(
                    "SELECT DISTINCT j.key FROM items, json_each(items.metadata) AS j"
                ).fetchall()
                self._columns = frozenset(str(k) for (k,) in rows)
            columns = self._columns
        return columns | view.columns() if view else columns

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None:
        """The stored embedding of an item (float16 for ivfpq_refine, approximate for ivfpq)."""
        index = self._index(attribute)
        view = self._live.view()
        item_id = str(item_id)
        if item_id in view.items:
            vec = view.items[item_id].vectors.get(attribute)
            return None if vec is None else np.array(vec, dtype=np.float32)
        if item_id in view.touched:
            return None
        found = self._base_by_id([item_id])
        return reconstruct(index, found[item_id].row) if item_id in found else None

    def _base_allowed(self, filters: dict[str, str | list[str]]) -> np.ndarray:
        """Rows of the published version whose metadata matches every filter."""
        key = filter_key(filters)
        with self._lock:
            hit = self._filter_cache.get(key)
            if hit is not None:
                self._filter_cache.move_to_end(key)
                return hit
        where, args = filter_sql(key)
        with self._lock:
            rows = self._con.execute(
                f"SELECT row FROM items WHERE {where} ORDER BY row", args).fetchall()
            result = np.fromiter((r for (r,) in rows), dtype=np.int64, count=len(rows))
            self._filter_cache[key] = result
            if len(self._filter_cache) > _FILTER_CACHE:
                self._filter_cache.popitem(last=False)
        return result

    def allowed_rows(self, filters: dict[str, str | list[str]]) -> np.ndarray:
        """Rows whose metadata matches every filter (a list value means any of), live
        items' rows included, sorted."""
        view = self._live.view()
        base = self._base_allowed(filters)
        if not view:
            return base
        ids = view.matching(filters) or frozenset()
        live = [li.item.row for i, li in view.items.items() if i in ids]
        return np.union1d(np.setdiff1d(base, view.hidden_rows), np.array(live, np.int64))

    # -- search ----------------------------------------------------------------------------
    def _params(self, attribute: str, sel: faiss.IDSelector) -> faiss.SearchParameters:
        spec = self._specs[attribute]
        return spec.kind.search_params(self._indexes[attribute], spec.params, sel)

    def _raw_search(self, attribute: str, q: np.ndarray, k: int, allowed: np.ndarray | None,
                    exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS top-k rows of the published version (only `allowed`, never `exclude`)."""
        index = self._index(attribute)
        if index.ntotal == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if exclude is not None and len(exclude):
            if allowed is None:
                return self._search_excluding(attribute, q, k, exclude)
            allowed = np.setdiff1d(allowed, exclude)
        if allowed is not None and len(allowed) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = max(1, min(int(k), index.ntotal))
        if allowed is None:
            return index.search(q, k)
        if len(allowed) <= BRUTE_FORCE_MAX:
            vecs = index.reconstruct_batch(allowed)
            scores = q @ vecs.T
            k = min(k, len(allowed))
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(scores, top, axis=1), allowed[top]
        sel = faiss.IDSelectorBatch(allowed)
        return index.search(q, k, params=self._params(attribute, sel))

    def _search_excluding(self, attribute: str, q: np.ndarray, k: int,
                          exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k without the rows the live changes hide: a search len(exclude) deeper with
        those rows dropped, or (many hidden rows) a search through a NOT selector."""
        index = self._index(attribute)
        k = max(1, min(int(k), index.ntotal))
        if len(exclude) > EXCLUDE_DEEPEN_MAX:
            inner = faiss.IDSelectorBatch(exclude)
            sel = faiss.IDSelectorNot(inner)
            found = index.search(q, k, params=self._params(attribute, sel))
            del sel, inner          # only now: the search no longer points at them
            return found
        scores, rows = index.search(q, min(k + len(exclude), int(index.ntotal)))
        keep = ~np.isin(rows, exclude)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(q), k), -1, dtype=np.int64)
        for n in range(len(q)):
            s, r = scores[n][keep[n]][:k], rows[n][keep[n]][:k]
            out_s[n, :len(s)], out_r[n, :len(r)] = s, r
        return out_s, out_r

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [n, {self.dim}], got {list(q.shape)}")
        return q

    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: dict[str, str] | None = None) -> list[list[tuple[Item, float]]]:
        """Top-k items per query vector by inner product for one attribute: the published
        version's (FAISS, without the rows live changes hide) merged with the live items'
        (exact)."""
        q = self._check_vectors(vectors)
        self._index(attribute)
        view = self._live.view()
        if k <= 0:
            return [[] for _ in range(len(q))]
        allowed = self._base_allowed(filters) if filters else None
        scores, rows = self._raw_search(attribute, q, k, allowed, view.hidden_rows)
        items = self._base_by_row(sorted({int(r) for r in rows.ravel() if r >= 0}))
        base = [[(items[int(r)], float(s)) for s, r in zip(srow, rrow, strict=True)
                 if r >= 0 and int(r) in items]
                for srow, rrow in zip(scores, rows, strict=True)]
        if not view.items:
            return base
        live = live_hits(view, attribute, q, k, filters)
        return [merge_hits(b, h, k) for b, h in zip(base, live, strict=True)]

    def search_many(self, weights: dict[str, float], vectors: dict[str, np.ndarray], k: int,
                    filters: dict[str, str] | None = None, candidates: int | None = None
                    ) -> list[tuple[Item, float, dict[str, float]]]:
        """Items ranked by the weighted sum of their per-attribute inner products.

        Candidates are the union of each attribute's top `candidates` (default max(10k, 100);
        all items when the index is that small), rescored exactly against the stored vectors,
        plus every live item (scored exactly).
        """
        weights = {a: float(w) for a, w in weights.items() if w}
        if not weights or k <= 0:
            return []
        missing = [a for a in weights if a not in vectors]
        if missing:
            raise ValueError(f"no query vector for attribute(s) {missing}")
        queries = {a: self._check_vectors(vectors[a])[0] for a in weights}
        view = self._live.view()
        allowed = self._base_allowed(filters) if filters else None
        depth = max(10 * k, 100) if candidates is None else max(int(candidates), k)
        cand: set[int] = set()
        for a in [a for a, w in weights.items() if w > 0] or list(weights):
            _, rows = self._raw_search(a, queries[a][None, :], depth, allowed, view.hidden_rows)
            cand.update(int(r) for r in rows[0] if r >= 0)
        rows = np.array(sorted(cand), dtype=np.int64)
        per_attr = {a: self._index(a).reconstruct_batch(rows) @ queries[a] if len(rows)
                    else np.zeros(0, np.float32) for a in weights}
        total = sum(weights[a] * per_attr[a] for a in weights)
        items: list = [None] * len(rows)
        if view.items:
            live_items, live_total, live_attr = live_many(view, weights, queries, filters)
            items += live_items
            total = np.concatenate([total, live_total])
            per_attr = {a: np.concatenate([per_attr[a], live_attr[a]]) for a in weights}
        if not len(items):
            return []
        order = np.argsort(-total, kind="stable")[:k]
        base = self._base_by_row([int(rows[i]) for i in order if i < len(rows)])
        out = []
        for i in order:
            item = base.get(int(rows[i])) if i < len(rows) else items[i]
            if item is not None:
                out.append((item, float(total[i]), {a: float(per_attr[a][i]) for a in weights}))
        return out

    # -- live changes --------------------------------------------------------------------------
    def put_item(self, item_id: str, image: bytes, metadata: dict,
                 vectors: dict[str, np.ndarray]) -> tuple[int, bool]:
        """Put (add or replace) an item in the journal: searchable at once here and, on
        their next read, in every reader of this INDEX_DIR. `vectors`: attribute -> [D]
        for every attribute. Returns (seq, whether an item with this id was replaced);
        JournalError when the journal cannot be written."""
        return self._live.put(str(item_id), image, dict(metadata), vectors)

    def delete_item(self, item_id: str) -> int | None:
        """Delete an item through the journal; its seq, or None when no item has the id."""
        return self._live.delete(str(item_id))

    @property
    def image_dirs(self) -> list[Path]:
        """Folders holding images this index stored itself (the live puts' uploads)."""
        return [self._live.journal.images]

    def live_status(self) -> dict:
        """The journal and what this version applies of it (see LiveOverlay.status)."""
        return self._live.status()

    def close(self) -> None:
        """Release the database connections and the indexes."""
        self._live.close()
        with self._lock:
            self._con.close()
            self._indexes.clear()

    def __enter__(self) -> CatalogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
