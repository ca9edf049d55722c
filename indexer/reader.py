"""Read a published index: the API the search service uses (docs/ARCHITECTURE.md).

`CatalogIndex.open(INDEX_DIR)` resolves the INDEX_DIR symlink once and reads every file from
that one version, so a concurrent rebuild (which swaps the link) never mixes versions.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from indexer.faiss_index import IndexSpec, prepare_reader, reconstruct
from indexer.manifest import Manifest
from indexer.writer import ITEMS_DB

BRUTE_FORCE_MAX = 20_000   # filtered searches over at most this many rows are exact scans
_FILTER_CACHE = 64


@dataclass(frozen=True)
class Item:
    """One indexed catalog item; `row` is its FAISS id."""

    row: int
    id: str
    image: str
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


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


def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


class CatalogIndex:
    """One immutable index version: items, per-attribute FAISS indexes, search."""

    def __init__(self, root: Path, manifest: Manifest, con: sqlite3.Connection,
                 indexes: dict[str, faiss.Index], specs: dict[str, IndexSpec]) -> None:
        self.root = root
        self.manifest = manifest
        self._con = con
        self._lock = threading.Lock()
        self._indexes = indexes
        self._specs = specs
        self._filter_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike) -> CatalogIndex:
        """Open the version INDEX_DIR points to now (FileNotFoundError / ValueError if bad)."""
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
        return cls(root, manifest, con, indexes, specs)

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

    def size(self, attribute: str) -> int:
        """Number of vectors in an attribute's index."""
        return int(self._index(attribute).ntotal)

    def __len__(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    # -- items -----------------------------------------------------------------------------
    def _items(self, where: str, args: tuple) -> list[Item]:
        with self._lock:
            rows = self._con.execute(
                f"SELECT row, id, image, metadata FROM items WHERE {where}", args).fetchall()
        return [Item(r, i, img, json.loads(meta)) for r, i, img, meta in rows]

    def items_by_row(self, rows: list[int]) -> dict[int, Item]:
        """Items of the given FAISS ids."""
        out: dict[int, Item] = {}
        rows = [int(r) for r in rows]
        for s in range(0, len(rows), 500):
            part = rows[s:s + 500]
            marks = ",".join("?" * len(part))
            out.update((it.row, it) for it in self._items(f"row IN ({marks})", tuple(part)))
        return out

    def list_items(self, offset: int, limit: int) -> tuple[int, list[Item]]:
        """(total item count, one page of items in index order)."""
        with self._lock:
            total = int(self._con.execute("SELECT COUNT(*) FROM items").fetchone()[0])
            rows = self._con.execute(
                "SELECT row, id, image, metadata FROM items ORDER BY row LIMIT ? OFFSET ?",
                (int(limit), int(offset))).fetchall()
        return total, [Item(r, i, img, json.loads(meta)) for r, i, img, meta in rows]

    def get(self, item_id: str) -> Item | None:
        """The item with this catalog id, or None."""
        found = self._items("id = ?", (str(item_id),))
        return found[0] if found else None

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None:
        """The stored embedding of an item (float16 for ivfpq_refine, approximate for ivfpq)."""
        index = self._index(attribute)
        item = self.get(item_id)
        return None if item is None else reconstruct(index, item.row)

    def allowed_rows(self, filters: dict[str, str | list[str]]) -> np.ndarray:
        """Rows whose metadata matches every filter (a list value means any of)."""
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                           for k, v in filters.items()))
        with self._lock:
            hit = self._filter_cache.get(key)
            if hit is not None:
                self._filter_cache.move_to_end(key)
                return hit
        clauses, args = [], []
        for k, v in key:
            values = list(v) if isinstance(v, tuple) else [v]
            marks = ",".join("?" * len(values))
            clauses.append(f"CAST(json_extract(metadata, ?) AS TEXT) IN ({marks})")
            args += [_json_path(k), *map(str, values)]
        with self._lock:
            rows = self._con.execute(
                f"SELECT row FROM items WHERE {' AND '.join(clauses) or '1'} ORDER BY row",
                args).fetchall()
            result = np.fromiter((r for (r,) in rows), dtype=np.int64, count=len(rows))
            self._filter_cache[key] = result
            if len(self._filter_cache) > _FILTER_CACHE:
                self._filter_cache.popitem(last=False)
        return result

    # -- search ----------------------------------------------------------------------------
    def _params(self, attribute: str, sel: faiss.IDSelector) -> faiss.SearchParameters:
        spec = self._specs[attribute]
        return spec.kind.search_params(self._indexes[attribute], spec.params, sel)

    def _raw_search(self, attribute: str, q: np.ndarray, k: int,
                    allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        index = self._index(attribute)
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

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [n, {self.dim}], got {list(q.shape)}")
        return q

    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: dict[str, str] | None = None) -> list[list[tuple[Item, float]]]:
        """Top-k items per query vector by inner product for one attribute."""
        q = self._check_vectors(vectors)
        self._index(attribute)
        allowed = self.allowed_rows(filters) if filters else None
        if self.size(attribute) == 0 or k <= 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in range(len(q))]
        scores, rows = self._raw_search(attribute, q, k, allowed)
        items = self.items_by_row(sorted({int(r) for r in rows.ravel() if r >= 0}))
        return [[(items[int(r)], float(s)) for s, r in zip(srow, rrow, strict=True)
                 if r >= 0 and int(r) in items]
                for srow, rrow in zip(scores, rows, strict=True)]

    def search_many(self, weights: dict[str, float], vectors: dict[str, np.ndarray], k: int,
                    filters: dict[str, str] | None = None
                    ) -> list[tuple[Item, float, dict[str, float]]]:
        """Items ranked by the weighted sum of their per-attribute inner products.

        Candidates are the union of each attribute's top max(10k, 100) (all items when the
        index is that small), rescored exactly against the stored vectors.
        """
        weights = {a: float(w) for a, w in weights.items() if w}
        if not weights or k <= 0:
            return []
        missing = [a for a in weights if a not in vectors]
        if missing:
            raise ValueError(f"no query vector for attribute(s) {missing}")
        queries = {a: self._check_vectors(vectors[a])[0] for a in weights}
        allowed = self.allowed_rows(filters) if filters else None
        if allowed is not None and len(allowed) == 0:
            return []
        depth = max(10 * k, 100)
        cand: set[int] = set()
        for a in [a for a, w in weights.items() if w > 0] or list(weights):
            _, rows = self._raw_search(a, queries[a][None, :], depth, allowed)
            cand.update(int(r) for r in rows[0] if r >= 0)
        if not cand:
            return []
        rows = np.array(sorted(cand), dtype=np.int64)
        per_attr = {a: self._index(a).reconstruct_batch(rows) @ queries[a] for a in weights}
        total = sum(weights[a] * per_attr[a] for a in weights)
        order = np.argsort(-total, kind="stable")[:k]
        items = self.items_by_row([int(rows[i]) for i in order])
        return [(items[int(rows[i])], float(total[i]),
                 {a: float(per_attr[a][i]) for a in weights})
                for i in order if int(rows[i]) in items]

    def close(self) -> None:
        """Release the database connection and the indexes."""
        with self._lock:
            self._con.close()
            self._indexes.clear()

    def __enter__(self) -> CatalogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
