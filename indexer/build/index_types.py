"""Index types: one small strategy object per type, the only place that knows a type.

Each strategy owns its FAISS factory string, its parameter defaults, the build-time and
search-time knobs, the search parameters of a filtered search, how an `--update` changes it
and its memory formula. Everything else (`faiss_index`, `build`, `reader`, `budget`, the CLI)
asks the registry :data:`TYPES` instead of branching on a type name.

Row ids: flat, hnsw and ivfpq_refine sit under an `IDMap2` (FAISS id = `items.row`); the
plain IVF types map ids natively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast

import faiss

TRAIN_ITERS = 12
ID_BYTES = 8             # one int64 id per vector
IDMAP2_BYTES = 40        # IDMap2: id_map entry + reverse hash-map entry (approximate)

Params = dict[str, Any]  # an index type's parameters, as the manifest records them
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# -- what the type stubs of faiss 1.15 leave out (the objects exist at run time) --------------
if TYPE_CHECKING:
    class SearchParametersHNSW(faiss.SearchParameters):
        efSearch: int

    class IndexIVFPQ(faiss.IndexIVFPQ):
        do_polysemous_training: bool

    class DirectMap:
        Hashtable: int

    class IDSelectorTranslated(faiss.IDSelector):      # the stubs take an array, not this
        def __init__(self, id_map: faiss.Int64Vector, sel: faiss.IDSelector) -> None: ...
else:
    SearchParametersHNSW = faiss.SearchParametersHNSW
    IndexIVFPQ = faiss.IndexIVFPQ
    DirectMap = faiss.DirectMap
    IDSelectorTranslated = faiss.IDSelectorTranslated


class _SwigVector(Protocol[T_co]):
    """A wrapped `std::vector` (e.g. `IndexPreTransform.chain`; the stubs call it a list)."""

    def at(self, i: int) -> T_co: ...


class _KeepsReferences(Protocol):
    """A SWIG object that holds Python references for the C++ pointers it keeps."""

    referenced_objects: list[object]


def _keep_alive(owner: object, *objects: object) -> None:
    """Keep `objects` alive as long as `owner` (which points to them but does not own them)."""
    cast(_KeepsReferences, owner).referenced_objects = list(objects)


def _as(obj: object, cls: type[T]) -> T:
    """`obj` (a downcast FAISS object) checked to be a `cls`."""
    if not isinstance(obj, cls):
        raise TypeError(f"expected a faiss {cls.__name__}, got {type(obj).__name__}")
    return obj


def _id_mapped(index: faiss.Index) -> faiss.IndexIDMap:
    """The `IDMap2` at the top of an index of a type that maps row ids itself."""
    return _as(faiss.downcast_index(index), faiss.IndexIDMap)


def largest_divisor_at_most(dim: int, cap: int) -> int:
    """The largest divisor of `dim` that is <= `cap` (at least 1)."""
    return max(d for d in range(1, max(1, min(dim, cap)) + 1) if dim % d == 0)


def ivf_nlist(n: int, train_size: int) -> int:
    """Inverted lists for `n` vectors: ~sqrt(n), at least 39 training points per list."""
    n_train = max(1, min(n, train_size))
    return max(1, min(round(math.sqrt(n)), n_train // 39))


def _bounded_kmeans(cps: list[faiss.ClusteringParameters]) -> None:
    for cp in cps:                          # bounded k-means: ~64 points per centroid
        cp.niter = TRAIN_ITERS
        cp.max_points_per_centroid = 64


# A deterministic cost model of one query, in nanoseconds on one core, to order knob settings
# by cost when tuning (indexer/build/tuning.py). From docs/SCALING.md's 1M and 200k x 2048
# runs: re-ranking costs ~2.4 us per float16 candidate of 2048 dimensions (k x 10 -> k x 100
# added 2.2 ms at 1M), a 4-bit fast-scan code ~20-60 ns per 256 B, a float32 centroid or
# graph neighbour ~0.25 ns per dimension.
RERANK_NS_PER_DIM = 1.2
SCAN_NS_PER_CODE_BYTE = 0.15        # 4-bit fast-scan; 8-bit PQ table look-ups cost ~5x more
FLOAT_NS_PER_DIM = 0.25


@dataclass(frozen=True)
class SearchKnobs:
    """What build-time tuning may change: a `primary` knob searched over `lo..hi` (recall
    grows with it), and optionally a `secondary` one taken from `values` (cheapest first)."""

    primary: str
    lo: int
    hi: int
    secondary: str | None = None
    values: tuple[int, ...] = ()


class IndexType:
    """The strategy interface, with the behaviour shared by most types."""

    name: ClassVar[str] = ""
    #: defaults of the fixed parameters (shown by `--help`); formula-based ones are in `params`
    defaults: ClassVar[Params] = {}
    #: the stored vectors can be read back (exactly or as float16): updates may re-type them
    keeps_vectors: ClassVar[bool] = True
    #: how --update applies removals/additions: "in_place", "re_add" (keep training) or
    #: "rebuild" (a new index from the kept vectors)
    update_rule: ClassVar[str] = "in_place"
    #: `faiss.read_index` flags for serving (memory-mapped storage)
    read_flags: ClassVar[int] = 0
    #: parameters that only steer searches (an update may change them on any type)
    search_keys: ClassVar[frozenset[str]] = frozenset()

    def params(self, n: int, dim: int, overrides: Params) -> Params:
        """Concrete parameters for `n` vectors of `dim` (overrides win over defaults)."""
        out = dict(self.defaults)
        out.update({k: v for k, v in overrides.items() if k in out})
        return out

    def factory(self, dim: int, params: Params) -> str:
        raise NotImplementedError

    def configure(self, index: faiss.Index, params: Params) -> None:
        """Build-time knobs on a fresh index (before training / adding)."""

    def tune(self, index: faiss.Index, params: Params) -> None:
        """Search-time knobs on a built or loaded index."""

    def search_params(self, index: faiss.Index, params: Params,
                      sel: faiss.IDSelector) -> faiss.SearchParameters:
        """Parameters of a search restricted to the rows `sel` accepts (row ids)."""
        out = faiss.SearchParameters()
        out.sel = sel
        return out

    def prepare_reader(self, index: faiss.Index, params: Params) -> None:
        """Make `index.reconstruct(row)` work on a loaded index."""

    def memory_bytes(self, n: int, dim: int, params: Params) -> int:
        """Resident memory of `n` vectors in this index (the budget formula)."""
        raise NotImplementedError

    def disk_bytes(self, n: int, dim: int, params: Params) -> int:
        """Memory-mapped storage on disk beyond `memory_bytes` (0 for in-memory types)."""
        return 0

    def knobs(self, n: int, params: Params) -> SearchKnobs | None:
        """The search-time knobs that tuning to a recall target sets (None: exact, none)."""
        return None

    def search_cost(self, n: int, dim: int, params: Params) -> float:
        """Estimated nanoseconds of one top-10 query (the cost model tuning minimises)."""
        return 0.0


class FlatType(IndexType):
    """Exact inner product over float32 vectors."""

    name = "flat"

    def factory(self, dim: int, params: Params) -> str:
        return "IDMap2,Flat"

    def memory_bytes(self, n: int, dim: int, params: Params) -> int:
        return n * (dim * 4 + IDMAP2_BYTES)


def _hnsw(index: faiss.Index) -> faiss.IndexHNSW:
    return _as(faiss.downcast_index(_id_mapped(index).index), faiss.IndexHNSW)


class HnswType(IndexType):
    """Graph search over float32 vectors (no deletions: updates rebuild)."""

    name = "hnsw"
    defaults = {"M": 32, "efConstruction": 40, "efSearch": 128}
    update_rule = "rebuild"
    search_keys = frozenset({"efSearch"})

    def factory(self, dim: int, params: Params) -> str:
        return f"IDMap2,HNSW{params['M']},Flat"

    def configure(self, index: faiss.Index, params: Params) -> None:
        _hnsw(index).hnsw.efConstruction = int(params["efConstruction"])

    def tune(self, index: faiss.Index, params: Params) -> None:
        _hnsw(index).hnsw.efSearch = int(params["efSearch"])

    def search_params(self, index: faiss.Index, params: Params,
                      sel: faiss.IDSelector) -> faiss.SearchParameters:
        out = SearchParametersHNSW()
        out.sel = sel
        out.efSearch = int(params["efSearch"])
        return out

    def memory_bytes(self, n: int, dim: int, params: Params) -> int:
        links = params["M"] * 2 * 4 * 1.05
        return int(n * (dim * 4 + IDMAP2_BYTES + links))

    def knobs(self, n: int, params: Params) -> SearchKnobs | None:
        return SearchKnobs("efSearch", 16, max(16, min(n, 4096)))

    def search_cost(self, n: int, dim: int, params: Params) -> float:
        visited = max(10, int(params["efSearch"])) * 2 * int(params["M"])
        return visited * dim * FLOAT_NS_PER_DIM


class IvfPqType(IndexType):
    """IVF with 8-bit product-quantized codes only: compact, approximate, no exact vectors."""

    name = "ivfpq"
    defaults = {"train_size": 65_536, "nbits": 8}
    keeps_vectors = False
    search_keys = frozenset({"nprobe"})

    def params(self, n: int, dim: int, overrides: Params) -> Params:
        train_size = int(overrides.get("train_size", self.defaults["train_size"]))
        n_train = max(1, min(n, train_size))
        nlist = int(overrides.get("nlist", ivf_nlist(n, train_size)))
        nbits = int(overrides.get("nbits", max(1, min(8, int(math.log2(n_train))))))
        m = int(overrides.get("m", largest_divisor_at_most(dim, max(1, dim // 8))))
        if dim % m:
            raise ValueError(f"{self.name}: m={m} must divide the dimension {dim}")
        nprobe = int(overrides.get("nprobe", min(nlist, max(16, nlist // 32))))
        return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe,
                "train_size": train_size}

    def factory(self, dim: int, params: Params) -> str:
        return f"IVF{params['nlist']},PQ{params['m']}x{params['nbits']}"

    def configure(self, index: faiss.Index, params: Params) -> None:
        ivf = _as(faiss.downcast_index(index), IndexIVFPQ)
        ivf.do_polysemous_training = False      # unused here, and very slow to train
        _bounded_kmeans([ivf.cp, ivf.pq.cp])

    def tune(self, index: faiss.Index, params: Params) -> None:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])

    def search_params(self, index: faiss.Index, params: Params,
                      sel: faiss.IDSelector) -> faiss.SearchParameters:
        return _ivf_params(sel, int(params["nprobe"]))

    def prepare_reader(self, index: faiss.Index, params: Params) -> None:
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type != DirectMap.Hashtable:
            ivf.set_direct_map_type(DirectMap.Hashtable)

    def memory_bytes(self, n: int, dim: int, params: Params) -> int:
        code = math.ceil(params["m"] * params["nbits"] / 8)
        return n * (code + ID_BYTES) + params["nlist"] * dim * 4

    def knobs(self, n: int, params: Params) -> SearchKnobs | None:
        return SearchKnobs("nprobe", 1, int(params["nlist"]))

    def search_cost(self, n: int, dim: int, params: Params) -> float:
        code = params["m"] * params["nbits"] / 8
        return _ivf_cost(n, dim, params, code * SCAN_NS_PER_CODE_BYTE * 5)


class IvfPqRefineType(IndexType):
    """(OPQ +) IVF + PQ codes (4-bit fast-scan or 8-bit) for candidates, then an exact
    re-rank of the top k x `k_factor` on float16 vectors memory-mapped from the index file.

    FAISS pieces: `OPQ{m}` rotation, `IVF{nlist}`, `PQ{m}x4fs` / `PQ{m}x{nbits}`,
    `Refine(SQfp16)` (an `IndexRefine` over an `IndexScalarQuantizer` whose codes are the
    float16 vectors; `IO_FLAG_MMAP_IFC` maps them instead of loading them).
    """

    name = "ivfpq_refine"
    # k x 100 candidates: re-ranking 1,000 float16 vectors costs 2-3 ms a query at 2048
    # dimensions (from the page cache) and took 1M x 2048 from recall@10 0.45-0.89 (k x 10)
    # to 0.998-1.0 (bench/scaling.py --k-factors, docs/SCALING.md)
    defaults = {"train_size": 65_536, "nbits": 4, "k_factor": 100, "opq": False}
    update_rule = "re_add"
    read_flags = faiss.IO_FLAG_MMAP_IFC
    search_keys = frozenset({"nprobe", "k_factor"})

    def params(self, n: int, dim: int, overrides: Params) -> Params:
        train_size = int(overrides.get("train_size", self.defaults["train_size"]))
        nlist = int(overrides.get("nlist", ivf_nlist(n, train_size)))
        nbits = int(overrides.get("nbits", self.defaults["nbits"]))
        if nbits not in (4, 8):
            raise ValueError(f"{self.name}: nbits must be 4 (fast-scan) or 8, got {nbits}")
        m = int(overrides.get("m", largest_divisor_at_most(dim, max(1, dim // 4))))
        if dim % m:
            raise ValueError(f"{self.name}: m={m} must divide the dimension {dim}")
        # OPQ: better codes, but its training costs minutes on CPUs even at 20k vectors
        # (docs/SCALING.md), so only on request
        opq = bool(overrides.get("opq", False))
        nprobe = int(overrides.get("nprobe", min(nlist, max(16, nlist // 16))))
        k_factor = int(overrides.get("k_factor", self.defaults["k_factor"]))
        return {"nlist": nlist, "m": m, "nbits": nbits, "opq": opq, "nprobe": nprobe,
                "k_factor": k_factor, "train_size": train_size}

    def factory(self, dim: int, params: Params) -> str:
        m, nbits = params["m"], params["nbits"]
        pq = f"PQ{m}x4fs" if nbits == 4 else f"PQ{m}x{nbits}"
        opq = f"OPQ{m}," if params.get("opq") else ""
        return f"IDMap2,{opq}IVF{params['nlist']},{pq},Refine(SQfp16)"

    @staticmethod
    def _refine(index: faiss.Index) -> faiss.IndexRefine:
        return _as(faiss.downcast_index(_id_mapped(index).index), faiss.IndexRefine)

    def configure(self, index: faiss.Index, params: Params) -> None:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if isinstance(ivf, IndexIVFPQ):         # 8-bit codes: no polysemous training (slow)
            ivf.do_polysemous_training = False
        cps = [_as(ivf, faiss.IndexIVF).cp]
        if isinstance(ivf, IndexIVFPQ | faiss.IndexIVFPQFastScan):
            cps.append(ivf.pq.cp)
        _bounded_kmeans(cps)
        base = faiss.downcast_index(self._refine(index).base_index)
        if isinstance(base, faiss.IndexPreTransform):     # OPQ: fewer, cheaper iterations
            chain = cast("_SwigVector[faiss.VectorTransform]", base.chain)
            opq = _as(faiss.downcast_VectorTransform(chain.at(0)), faiss.OPQMatrix)
            opq.niter = 10
            opq.niter_pq = 4
            opq.max_train_points = min(opq.max_train_points, params["train_size"])
            # train the rotation with the codes' own 4/8-bit PQ, not FAISS's default 8-bit
            pq = faiss.ProductQuantizer(index.d, params["m"], params["nbits"])
            opq.pq = pq
            _keep_alive(index, pq)               # SWIG keeps no reference of its own

    def tune(self, index: faiss.Index, params: Params) -> None:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        self._refine(index).k_factor = float(params["k_factor"])

    def search_params(self, index: faiss.Index, params: Params,
                      sel: faiss.IDSelector) -> faiss.SearchParameters:
        # IndexRefine hands only `base_index_params` to the IVF, and IDMap2 translates only
        # the top-level selector: translate rows to internal ids here.
        translated = IDSelectorTranslated(_id_mapped(index).id_map, sel)
        base = _ivf_params(translated, int(params["nprobe"]))
        out = faiss.IndexRefineSearchParameters()
        out.k_factor = float(params["k_factor"])
        out.base_index_params = base
        _keep_alive(out, base, translated, sel)          # SWIG does not keep them alive
        return out

    def memory_bytes(self, n: int, dim: int, params: Params) -> int:
        code = math.ceil(params["m"] * params["nbits"] / 8)
        rotation = dim * dim * 4 if params.get("opq") else 0
        return n * (code + ID_BYTES + IDMAP2_BYTES) + params["nlist"] * dim * 4 + rotation

    def disk_bytes(self, n: int, dim: int, params: Params) -> int:
        return n * dim * 2

    def knobs(self, n: int, params: Params) -> SearchKnobs | None:
        # k x 100 was the depth that 1M vectors needed (docs/SCALING.md); deeper only helps
        # codes too coarse to order a cluster, shallower is cheaper where the codes suffice
        return SearchKnobs("nprobe", 1, int(params["nlist"]), "k_factor",
                           (10, 25, 50, 100, 200, 400))

    def search_cost(self, n: int, dim: int, params: Params) -> float:
        per_code = params["m"] * params["nbits"] / 8 * SCAN_NS_PER_CODE_BYTE
        if params["nbits"] != 4:
            per_code *= 5
        rerank = 10 * int(params["k_factor"]) * dim * RERANK_NS_PER_DIM
        return _ivf_cost(n, dim, params, per_code) + rerank


def _ivf_cost(n: int, dim: int, params: Params, per_code: float) -> float:
    """Coarse quantizer plus the codes of `nprobe` of `nlist` lists, nanoseconds."""
    nlist = max(1, int(params["nlist"]))
    scanned = n * min(nlist, int(params["nprobe"])) / nlist
    return nlist * dim * FLOAT_NS_PER_DIM + scanned * per_code


def _ivf_params(sel: faiss.IDSelector, nprobe: int) -> faiss.SearchParametersIVF:
    out = faiss.SearchParametersIVF()
    out.sel = sel
    out.nprobe = nprobe
    return out


TYPES: dict[str, IndexType] = {t.name: t for t in (FlatType(), HnswType(), IvfPqType(),
                                                   IvfPqRefineType())}
INDEX_TYPES = tuple(TYPES)


def get_type(name: str) -> IndexType:
    """The strategy of `name` (ValueError listing the known types)."""
    try:
        return TYPES[name]
    except KeyError:
        raise ValueError(f"unknown index type {name!r}; known: {', '.join(TYPES)}") from None


@dataclass
class IndexSpec:
    """An index type and its concrete parameters, as recorded in the manifest."""

    type: str
    params: Params

    @property
    def kind(self) -> IndexType:
        return get_type(self.type)

    def factory(self, dim: int) -> str:
        """The `faiss.index_factory` string of this spec."""
        return self.kind.factory(dim, self.params)

    def memory_bytes(self, n: int, dim: int) -> int:
        return self.kind.memory_bytes(n, dim, self.params)

    def same_structure(self, other: IndexSpec) -> bool:
        """Same type and build parameters (search-time knobs may differ)."""
        if self.type != other.type:
            return False
        keys = self.kind.search_keys
        strip = lambda p: {k: v for k, v in p.items() if k not in keys}  # noqa: E731
        return strip(self.params) == strip(other.params)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "params": dict(self.params)}
