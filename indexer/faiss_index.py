"""FAISS index types (exact, HNSW, IVF-PQ) over inner product: choose, build, update, tune.

Every index maps FAISS ids to `items.row`: flat and HNSW through an `IDMap2` wrapper,
IVF-PQ natively. Exact types (flat, hnsw) keep the raw vectors, so they can be read back
exactly (`extract`); IVF-PQ stores compressed codes only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
EXACT_STORAGE = frozenset({"flat", "hnsw"})
# Automatic choice by catalog size (see docs/BENCHMARKS.md, "Index types").
AUTO_HNSW_FROM = 100_000
AUTO_IVFPQ_FROM = 500_000
ADD_CHUNK = 65_536
TRAIN_SEED = 1234
TRAIN_ITERS = 12

log = logging.getLogger(__name__)

VectorGetter = Callable[[np.ndarray], np.ndarray]  # positions -> float32 [len, D]


@dataclass
class IndexSpec:
    """An index type and its parameters, as recorded in the manifest."""

    type: str
    params: dict = field(default_factory=dict)

    def factory(self, dim: int) -> str:
        """The `faiss.index_factory` string of this spec."""
        p = self.params
        if self.type == "flat":
            return "IDMap2,Flat"
        if self.type == "hnsw":
            return f"IDMap2,HNSW{p['M']},Flat"
        if self.type == "ivfpq":
            return f"IVF{p['nlist']},PQ{p['m']}x{p['nbits']}"
        raise ValueError(f"unknown index type {self.type!r}; known: {', '.join(INDEX_TYPES)}")

    def to_dict(self) -> dict:
        return {"type": self.type, "params": dict(self.params)}


def auto_type(n: int) -> str:
    """Index type chosen by catalog size."""
    if n >= AUTO_IVFPQ_FROM:
        return "ivfpq"
    return "hnsw" if n >= AUTO_HNSW_FROM else "flat"


def _largest_divisor_at_most(dim: int, cap: int) -> int:
    return max(d for d in range(1, min(dim, cap) + 1) if dim % d == 0)


def resolve_spec(kind: str, n: int, dim: int, overrides: dict | None = None) -> IndexSpec:
    """Concrete parameters for `kind` ('auto' picks by `n`) on `n` vectors of `dim`."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    kind = auto_type(n) if kind == "auto" else kind
    if kind == "flat":
        params: dict = {}
    elif kind == "hnsw":
        params = {"M": 32, "efConstruction": 40, "efSearch": 128}
    elif kind == "ivfpq":
        train_size = int(overrides.get("train_size", 65_536))
        n_train = max(1, min(n, train_size))
        nlist = int(overrides.get("nlist", max(1, min(round(math.sqrt(n)), n_train // 39))))
        nbits = int(overrides.get("nbits", max(1, min(8, int(math.log2(n_train))))))
        m = int(overrides.get("m", _largest_divisor_at_most(dim, max(1, dim // 8))))
        if dim % m:
            raise ValueError(f"ivfpq: m={m} must divide the dimension {dim}")
        nprobe = int(overrides.get("nprobe", min(nlist, max(16, nlist // 32))))
        params = {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe,
                  "train_size": train_size}
    else:
        raise ValueError(f"unknown index type {kind!r}; known: auto, {', '.join(INDEX_TYPES)}")
    params.update({k: v for k, v in overrides.items() if k in params})
    return IndexSpec(kind, params)


def new_index(spec: IndexSpec, dim: int) -> faiss.Index:
    """An empty (untrained) index for `spec`."""
    index = faiss.index_factory(dim, spec.factory(dim), faiss.METRIC_INNER_PRODUCT)
    if spec.type == "hnsw":
        hnsw = faiss.downcast_index(faiss.downcast_index(index).index)
        hnsw.hnsw.efConstruction = int(spec.params["efConstruction"])
    elif spec.type == "ivfpq":
        ivf = faiss.downcast_index(index)
        ivf.do_polysemous_training = False      # unused here, and very slow to train
        for cp in (ivf.cp, ivf.pq.cp):          # bounded k-means: ~64 points per centroid
            cp.niter = TRAIN_ITERS
            cp.max_points_per_centroid = 64
    tune(index, spec)
    return index


def tune(index: faiss.Index, spec: IndexSpec) -> None:
    """Apply the search-time parameters of `spec` (efSearch, nprobe) to a loaded index."""
    if spec.type == "hnsw":
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        inner.hnsw.efSearch = int(spec.params["efSearch"])
    elif spec.type == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(spec.params["nprobe"])


ToGpu = Callable[[faiss.Index], faiss.Index]   # a CPU index -> its GPU copy


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
            ivf = faiss.extract_index_ivf(index)
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
    """All (ids, vectors) of an exact-storage index (flat or hnsw), in internal order."""
    idmap = faiss.downcast_index(index)
    if not isinstance(idmap, faiss.IndexIDMap2 | faiss.IndexIDMap):
        raise ValueError("only flat and hnsw indexes keep exact vectors")
    ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    vecs = idmap.index.reconstruct_n(0, idmap.index.ntotal) if len(ids) else np.zeros(
        (0, index.d), dtype=np.float32)
    return ids, vecs


def update(index: faiss.Index, spec: IndexSpec, remove: np.ndarray, add_ids: np.ndarray,
           add_vecs: np.ndarray) -> faiss.Index:
    """Remove rows `remove`, then add `add_vecs` under `add_ids`; returns the index to keep."""
    remove = np.ascontiguousarray(remove, dtype=np.int64)
    add_ids = np.ascontiguousarray(add_ids, dtype=np.int64)
    add_vecs = np.ascontiguousarray(add_vecs, dtype=np.float32)
    if spec.type == "hnsw":  # HNSW cannot delete: rebuild from its exact vectors
        ids, vecs = extract(index)
        keep = ~np.isin(ids, remove)
        all_ids = np.concatenate([ids[keep], add_ids])
        all_vecs = np.concatenate([vecs[keep], add_vecs]) if len(add_vecs) else vecs[keep]
        order = np.argsort(all_ids, kind="stable")
        all_ids, all_vecs = all_ids[order], all_vecs[order]
        return build(spec, index.d, all_ids, all_vecs.__getitem__)
    if len(remove):
        index.remove_ids(faiss.IDSelectorBatch(remove))
    if len(add_ids):
        index.add_with_ids(add_vecs, add_ids)
    return index


def enable_reconstruct(index: faiss.Index, spec: IndexSpec) -> None:
    """Let `reconstruct` look rows up (IVF-PQ needs a hash-table direct map)."""
    if spec.type == "ivfpq":
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


def reconstruct(index: faiss.Index, row: int) -> np.ndarray | None:
    """The stored vector of `row` (approximate for ivfpq), or None when absent."""
    try:
        return index.reconstruct(int(row))
    except RuntimeError:
        return None


def bytes_per_vector(spec: IndexSpec, dim: int) -> float:
    """Approximate memory per stored vector (codes + ids + graph links)."""
    if spec.type == "flat":
        return dim * 4 + 8
    if spec.type == "hnsw":
        return dim * 4 + 8 + spec.params["M"] * 2 * 4 * 1.05
    return math.ceil(spec.params["m"] * spec.params["nbits"] / 8) + 8
