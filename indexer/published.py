"""Read one published, immutable index version: its items, per-attribute FAISS indexes,
filters, exact and approximate search, stored vectors and search-time knobs.

`PublishedIndex` knows nothing of live changes: the reads that the live changes affect take
`exclude`, the rows they hide, and `indexer.reader.CatalogIndex` merges the live items in
(as FAISS composes `IndexIDMap` or `IndexRefine` over a base index).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np

from indexer.build.faiss_index import IndexSpec, prepare_reader, reconstruct
from indexer.filters import Filters
from indexer.items import Hit, Item, ItemsTable, Rescore, ranked_candidates
from indexer.manifest import AttributeEntry, Manifest
from indexer.prototype_file import read_prototypes_file
from indexer.tags import FacetCount
from model.prototypes import Prototypes
from model.tagging import Calibration

log = logging.getLogger(__name__)

BRUTE_FORCE_MAX = 20_000   # filtered searches over at most this many rows are exact scans
EXCLUDE_DEEPEN_MAX = 1024  # fewer rows excluded: search that much deeper and drop them

TopK = tuple[np.ndarray, np.ndarray]   # scores [n, k] float32, rows [n, k] int64 (-1: none)


def _empty(n: int) -> TopK:
    return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)


def _read_index(root: Path, entry: AttributeEntry, dim: int) -> tuple[faiss.Index, IndexSpec]:
    """One attribute's FAISS index, checked against the manifest and ready to read."""
    info = entry.index
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
    return index, spec


class PublishedIndex:
    """One immutable index version (thread-safe; `set_search_params` is the only change)."""

    def __init__(self, root: Path, manifest: Manifest, items: ItemsTable,
                 indexes: dict[str, faiss.Index], specs: dict[str, IndexSpec]) -> None:
        self.root = root
        self.manifest = manifest
        self.items = items
        self._indexes = indexes
        self._specs = specs
        self._lock = threading.Lock()
        self._prototypes: tuple[Prototypes, Calibration | None] | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> PublishedIndex:
        """Open the version `folder` is (or, a symlink, points to now): FileNotFoundError
        when something is missing, ValueError when a file is invalid."""
        root = Path(os.path.realpath(folder))
        if not root.is_dir():
            raise FileNotFoundError(f"no index at {folder}")
        manifest = Manifest.read(root)
        items = ItemsTable.open(root)
        indexes: dict[str, faiss.Index] = {}
        specs: dict[str, IndexSpec] = {}
        try:
            for entry in manifest.attributes:
                indexes[entry.name], specs[entry.name] = _read_index(root, entry,
                                                                     manifest.model.dim)
        except BaseException:
            items.close()
            raise
        log.debug("opened index version %s at %s", manifest.index_version, root)
        return cls(root, manifest, items, indexes, specs)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.manifest.index_version

    @property
    def attributes(self) -> list[str]:
        return self.manifest.attribute_names

    @property
    def dim(self) -> int:
        return self.manifest.model.dim

    def faiss_index(self, attribute: str) -> faiss.Index:
        """The FAISS index of an attribute (KeyError listing the valid names)."""
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
        index = self.faiss_index(attribute)
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
        """Number of vectors of an attribute."""
        return int(self.faiss_index(attribute).ntotal)

    def __len__(self) -> int:
        return self.items.count()

    # -- items ---------------------------------------------------------------------------------
    def items_by_row(self, rows: Sequence[int]) -> dict[int, Item]:
        """Items of the given FAISS ids (rows the version lacks are absent)."""
        return self.items.by_rows(rows)

    def items_by_id(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """Items of the given catalog ids (ids the version lacks are absent)."""
        return self.items.by_ids(item_ids)

    def rows_of(self, item_ids: Sequence[str]) -> dict[str, int]:
        """id -> row of those `item_ids` the version has."""
        return {i: it.row for i, it in self.items.by_ids(item_ids).items()}

    def list_items(self, offset: int, limit: int, exclude: np.ndarray | None = None
                   ) -> tuple[int, list[Item]]:
        """(item count, one page of items in row order), both without the rows `exclude`
        (rows the version has)."""
        hidden = 0 if exclude is None else len(exclude)
        return len(self) - hidden, self.items.page(offset, limit, exclude)

    def metadata_columns(self) -> frozenset[str]:
        """Every metadata key of the items."""
        return self.items.columns()

    def allowed_rows(self, filters: Filters) -> np.ndarray:
        """Rows whose metadata matches every filter (a list value means any of), sorted."""
        return self.items.matching_rows(filters)

    # -- tags ----------------------------------------------------------------------------------
    def _value_space(self) -> tuple[Prototypes, Calibration | None] | None:
        """The version's prototypes.json, read once (None: built without tags)."""
        name = self.manifest.tags_file
        if name is None:
            return None
        with self._lock:
            if self._prototypes is None:
                self._prototypes = read_prototypes_file(self.root / name)
            return self._prototypes

    def prototypes(self) -> Prototypes | None:
        """The value prototypes the version's tags were made with (None: no tags)."""
        space = self._value_space()
        return None if space is None else space[0]

    def calibration(self) -> Calibration | None:
        """The calibration of the version's tag confidences (None: no tags or none)."""
        space = self._value_space()
        return None if space is None else space[1]

    @property
    def tagged(self) -> frozenset[str]:
        """The attributes the items have tags for."""
        return self.items.tagged

    def facet_counts(self, attribute: str, rows: Sequence[int] | None = None,
                     exclude: np.ndarray | None = None, min_confidence: float = 0.0
                     ) -> list[FacetCount]:
        """Facet counts of a tagged attribute over `rows` (None: all) without `exclude`."""
        self.faiss_index(attribute)
        return self.items.facets(attribute, rows, exclude, min_confidence)

    # -- stored vectors ------------------------------------------------------------------------
    def vectors(self, attribute: str, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of `rows`, [len(rows), D] float32 (float16-exact for
        ivfpq_refine, the PQ approximation for ivfpq)."""
        index = self.faiss_index(attribute)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def embedding(self, item_id: str, attribute: str) -> np.ndarray | None:
        """The stored vector of an item, or None when the version lacks the id."""
        index = self.faiss_index(attribute)
        found = self.items.by_ids([str(item_id)])
        return reconstruct(index, found[str(item_id)].row) if found else None

    # -- search --------------------------------------------------------------------------------
    def query_matrix(self, vectors: np.ndarray) -> np.ndarray:
        """Query vectors as C-contiguous float32 [n, D] (ValueError for another shape)."""
        q = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [n, {self.dim}], got {list(q.shape)}")
        return q

    def query_vectors(self, weights: Mapping[str, float], vectors: Mapping[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
        """One [D] query per weighted attribute (ValueError when one is missing)."""
        missing = [a for a in weights if a not in vectors]
        if missing:
            raise ValueError(f"no query vector for attribute(s) {missing}")
        return {a: self.query_matrix(vectors[a])[0] for a in weights}

    def search(self, attribute: str, vectors: np.ndarray, k: int,
               filters: Filters | None = None, exclude: np.ndarray | None = None
               ) -> list[list[Hit]]:
        """Top-k items per query vector by inner product for one attribute (only rows
        matching `filters`, never rows in `exclude`)."""
        q = self.query_matrix(vectors)
        self.faiss_index(attribute)
        if k <= 0:
            return [[] for _ in range(len(q))]
        allowed = self.allowed_rows(filters) if filters else None
        scores, rows = self._top_rows(attribute, q, k, allowed, exclude)
        items = self.items.by_rows(sorted({int(r) for r in rows.ravel() if r >= 0}))
        return [[Hit(items[int(r)], float(s)) for s, r in zip(srow, rrow, strict=True)
                 if r >= 0 and int(r) in items]
                for srow, rrow in zip(scores, rows, strict=True)]

    def search_many(self, weights: Mapping[str, float], vectors: Mapping[str, np.ndarray],
                    k: int, filters: Filters | None = None, candidates: int | None = None,
                    exclude: np.ndarray | None = None, rescore: Rescore | None = None
                    ) -> list[Hit]:
        """Items ranked by the weighted sum of their per-attribute inner products (or by
        `rescore` of their stored vectors).

        Candidates are the union of each attribute's top `candidates` (default
        max(10k, 100); all items when the version is that small; the positively weighted
        attributes' only, when there are some), rescored exactly against the stored vectors.
        """
        weights = {a: float(w) for a, w in weights.items() if w}
        if not weights or k <= 0:
            return []
        queries = self.query_vectors(weights, vectors)
        allowed = self.allowed_rows(filters) if filters else None
        depth = max(10 * k, 100) if candidates is None else max(int(candidates), k)
        found: set[int] = set()
        for a in [a for a, w in weights.items() if w > 0] or list(weights):
            _, top = self._top_rows(a, queries[a][None, :], depth, allowed, exclude)
            found.update(int(r) for r in top[0] if r >= 0)
        rows = np.array(sorted(found), dtype=np.int64)
        if not len(rows):
            return []
        stored = {a: self.vectors(a, rows) for a in weights}
        per_attr = {a: stored[a] @ queries[a] for a in weights}
        order, total = ranked_candidates(weights, per_attr, stored, k, rescore)
        items = self.items.by_rows(int(rows[i]) for i in order)
        return [Hit(items[int(rows[i])], float(total[i]),
                    {a: float(per_attr[a][i]) for a in weights})
                for i in order if int(rows[i]) in items]

    def _params(self, attribute: str, sel: faiss.IDSelector) -> faiss.SearchParameters:
        spec = self._specs[attribute]
        return spec.kind.search_params(self._indexes[attribute], spec.params, sel)

    def _top_rows(self, attribute: str, q: np.ndarray, k: int, allowed: np.ndarray | None,
                  exclude: np.ndarray | None) -> TopK:
        """Top-k rows (only `allowed`, never `exclude`): FAISS, or an exact scan of a small
        allowed set."""
        index = self.faiss_index(attribute)
        if index.ntotal == 0:
            return _empty(len(q))
        if exclude is not None and len(exclude):
            if allowed is None:
                return self._top_rows_excluding(attribute, q, k, exclude)
            allowed = np.setdiff1d(allowed, exclude)
        if allowed is not None and len(allowed) == 0:
            return _empty(len(q))
        k = max(1, min(int(k), index.ntotal))
        if allowed is None:
            return index.search(q, k)
        if len(allowed) <= BRUTE_FORCE_MAX:
            scores = q @ index.reconstruct_batch(allowed).T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, len(allowed))]
            return np.take_along_axis(scores, top, axis=1), allowed[top]
        sel = faiss.IDSelectorBatch(allowed)
        return index.search(q, k, params=self._params(attribute, sel))

    def _top_rows_excluding(self, attribute: str, q: np.ndarray, k: int,
                            exclude: np.ndarray) -> TopK:
        """Top-k without the rows `exclude`: a search len(exclude) deeper with those rows
        dropped, or (many rows) a search through a NOT selector."""
        index = self.faiss_index(attribute)
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

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the items database and the indexes."""
        self.items.close()
        with self._lock:
            self._indexes.clear()

    def __enter__(self) -> PublishedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
