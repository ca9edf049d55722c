"""Build, update, tune and read back FAISS indexes over inner product of unit-norm vectors.

What differs between index types lives in :mod:`indexer.build.index_types` (one strategy object
per type); this module holds the steps every type goes through: resolve parameters, create,
train (on the GPU when FAISS sees one), add in chunks, update, extract.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

import faiss
import numpy as np

from indexer.build.index_types import INDEX_TYPES, TYPES, IndexSpec, get_type

__all__ = ["INDEX_TYPES", "IndexSpec", "auto_type", "build", "extract", "new_index",
           "prepare_reader", "reconstruct", "resolve_spec", "train_ivf", "tune", "update"]

# Automatic choice by catalog size (see docs/BENCHMARKS.md, "Index types").
AUTO_HNSW_FROM = 100_000
AUTO_IVFPQ_FROM = 500_000
ADD_CHUNK = 65_536
TRAIN_SEED = 1234

log = logging.getLogger(__name__)

VectorGetter = Callable[[np.ndarray], np.ndarray]  # positions -> float32 [len, D]


def auto_type(n: int) -> str:
    """Index type chosen by catalog size."""
    if n >= AUTO_IVFPQ_FROM:
        return "ivfpq"
    return "hnsw" if n >= AUTO_HNSW_FROM else "flat"


def resolve_spec(kind: str, n: int, dim: int,
                 overrides: dict[str, Any] | None = None) -> IndexSpec:
    """Concrete parameters for `kind` ('auto' picks by `n`) on `n` vectors of `dim`."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    kind = auto_type(n) if kind == "auto" else kind
    if kind not in TYPES:
        raise ValueError(f"unknown index type {kind!r}; known: auto, {', '.join(INDEX_TYPES)}")
    return IndexSpec(kind, get_type(kind).params(n, dim, overrides))


def new_index(spec: IndexSpec, dim: int) -> faiss.Index:
    """An empty (untrained) index for `spec`, build- and search-time knobs applied."""
    index = faiss.index_factory(dim, spec.factory(dim), faiss.METRIC_INNER_PRODUCT)
    spec.kind.configure(index, spec.params)
    spec.kind.tune(index, spec.params)
    return index


def tune(index: faiss.Index, spec: IndexSpec) -> None:
    """Apply the search-time parameters of `spec` to a loaded index."""
    spec.kind.tune(index, spec.params)


def prepare_reader(index: faiss.Index, spec: IndexSpec) -> None:
    """Search-time parameters plus whatever `reconstruct(row)` needs, on a loaded index."""
    spec.kind.tune(index, spec.params)
    spec.kind.prepare_reader(index, spec.params)


ToGpu = Callable[[faiss.Index], faiss.Index]   # a CPU index -> its GPU copy


class _ClusteredIVF(Protocol):
    """An IVF's k-means index: a raw pointer, None when unset (the stubs say always set)."""

    clustering_index: faiss.Index | None


def _all_gpus(index: faiss.Index) -> faiss.Index:
    return faiss.index_cpu_to_all_gpus(index)


def train_ivf(index: faiss.Index, sample: np.ndarray, to_gpu: ToGpu | None = None) -> str:
    """Train an IVF index on `sample`; returns where its coarse k-means ran ("gpu"/"cpu").

    With `to_gpu`, the k-means runs on the index it returns for a flat L2 index. The IVF
    keeps only a raw pointer to that clustering index (the SWIG wrapper owns it), so it is
    held here for the whole of training and detached afterwards. Any GPU failure, in the
    copy or in training, falls back to training on the CPU.
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if to_gpu is not None:
        try:
            ivf = cast(_ClusteredIVF, faiss.extract_index_ivf(index))
            clustering = to_gpu(faiss.IndexFlatL2(index.d))
            ivf.clustering_index = clustering
            try:
                index.train(sample)
            finally:
                ivf.clustering_index = None
                del clustering           # only now: the IVF no longer points at it
            return "gpu"
        except Exception as exc:  # noqa: BLE001 - a GPU that cannot be used means the CPU path
            log.warning("IVF training on the GPU failed (%s: %s); training on the CPU",
                        type(exc).__name__, exc)
    index.train(sample)
    return "cpu"


def _train(index: faiss.Index, spec: IndexSpec, n: int, get: VectorGetter,
           use_gpu: bool) -> None:
    if index.is_trained:
        return
    m = min(n, int(spec.params.get("train_size", n)))
    rng = np.random.default_rng(TRAIN_SEED)
    pick = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    train_ivf(index, get(pick), _all_gpus if use_gpu else None)


def build(spec: IndexSpec, dim: int, ids: np.ndarray, get: VectorGetter,
          use_gpu: bool | None = None) -> faiss.Index:
    """Build an index over `len(ids)` vectors read in chunks with `get(positions)`."""
    use_gpu = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
    index = new_index(spec, dim)
    n = len(ids)
    if n and not index.is_trained:
        _train(index, spec, n, get, use_gpu)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for s in range(0, n, ADD_CHUNK):
        e = min(n, s + ADD_CHUNK)
        vecs = np.ascontiguousarray(get(np.arange(s, e)), dtype=np.float32)
        index.add_with_ids(vecs, ids[s:e])
    return index


def extract(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """All (ids, vectors) of an `IDMap2`-wrapped index (flat, hnsw: exact; ivfpq_refine:
    float16-exact), in internal order."""
    idmap = faiss.downcast_index(index)
    if not isinstance(idmap, faiss.IndexIDMap2 | faiss.IndexIDMap):
        raise ValueError("this index keeps no vectors that can be read back (ivfpq)")
    ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    vecs = idmap.index.reconstruct_n(0, idmap.index.ntotal) if len(ids) else np.zeros(
        (0, index.d), dtype=np.float32)
    return ids, vecs


def _merge_vectors(index: faiss.Index, remove: np.ndarray, add_ids: np.ndarray,
                   add_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index's vectors minus `remove` plus the added ones, sorted by id."""
    ids, vecs = extract(index)
    keep = ~np.isin(ids, remove)
    all_ids = np.concatenate([ids[keep], add_ids])
    all_vecs = np.concatenate([vecs[keep], add_vecs]) if len(add_vecs) else vecs[keep]
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], np.ascontiguousarray(all_vecs[order], dtype=np.float32)


def update(index: faiss.Index, spec: IndexSpec, remove: np.ndarray, add_ids: np.ndarray,
           add_vecs: np.ndarray) -> faiss.Index:
    """Remove rows `remove`, then add `add_vecs` under `add_ids`; returns the index to keep.

    The type's `update_rule` says how: in place, re-adding every vector to the trained but
    emptied index, or rebuilding a new one from the kept vectors.
    """
    remove = np.ascontiguousarray(remove, dtype=np.int64)
    add_ids = np.ascontiguousarray(add_ids, dtype=np.int64)
    add_vecs = np.ascontiguousarray(add_vecs, dtype=np.float32)
    rule = spec.kind.update_rule
    if rule == "rebuild":
        all_ids, all_vecs = _merge_vectors(index, remove, add_ids, add_vecs)
        return build(spec, index.d, all_ids, all_vecs.__getitem__)
    if rule == "re_add":
        all_ids, all_vecs = _merge_vectors(index, remove, add_ids, add_vecs)
        index.reset()                              # keeps the trained quantizers
        for s in range(0, len(all_ids), ADD_CHUNK):
            index.add_with_ids(all_vecs[s:s + ADD_CHUNK], all_ids[s:s + ADD_CHUNK])
        return index
    if len(remove):
        index.remove_ids(faiss.IDSelectorBatch(remove))
    if len(add_ids):
        index.add_with_ids(add_vecs, add_ids)
    return index


def reconstruct(index: faiss.Index, row: int) -> np.ndarray | None:
    """The stored vector of `row` (approximate for ivfpq), or None when absent."""
    try:
        return np.asarray(index.reconstruct(int(row)), dtype=np.float32)
    except RuntimeError:
        return None
