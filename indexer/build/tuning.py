"""`build --target-recall R`: the cheapest search-time knobs whose recall@10 reaches R.

How recall depends on the knobs depends on the data (an IVF's `nprobe = nlist / 16` reached
0.998 on one distribution and 0.89 on another), so the build measures it, as autofaiss tunes
its indexes: a seeded sample of the index's own vectors are the queries, their exact top 10
comes from brute-force inner product over all the vectors with each query's own entry left
out, and the built index answers them at each knob setting tried.

The settings are searched in order of cost (the type's :meth:`IndexType.search_cost`, a
deterministic per-query model, so the choice does not depend on the machine's load): the
smallest primary knob (`nprobe`, `efSearch`) that reaches the target at the current secondary
one (`k_factor`), by halving or doubling from the built value and then bisecting; then the
cheaper secondary values, each only up to the primary value at which it would cost more than
the best so far; the dearer ones only when the target is out of reach. A setting reaches the
target when its recall minus two standard errors (over the sample's queries) does, so that
other queries reach it too: with 1,000 queries, two samples' recalls at one setting differed by
0.006 (two standard errors) on bench/recall_target.py's vectors. When none does, the setting
of the highest recall is kept and the manifest says `reached: false`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import faiss
import numpy as np

from indexer.build.index_types import IndexSpec, Params, SearchKnobs
from indexer.manifest import TuningInfo

log = logging.getLogger(__name__)

K = 10                      # recall@10
DEFAULT_TARGET = 0.95
DEFAULT_SAMPLE = 1000       # queries
TUNE_SEED = 4321
RETUNE_DRIFT = 0.10         # an update re-tunes once this share of the rows has changed
TRUTH_CHUNK = 8_192         # vectors per brute-force block (sample x chunk float32 scores)
BISECT_PRECISION = 8        # bisect the primary knob to within 1/8 of its value
MARGIN_SE = 2.0             # a setting reaches the target when recall - 2 x stderr does

VectorGetter = Callable[[np.ndarray], np.ndarray]   # positions -> float32 [len, D]


@dataclass
class Vectors:
    """The vectors an index holds: row ids and a reader of positions 0..n-1."""

    ids: np.ndarray          # int64 [n]: the FAISS ids (rows) of the positions
    get: VectorGetter

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class TuneRequest:
    """What the build flags ask of tuning."""

    target: float | None = None           # --target-recall (None: the recorded one, or 0.95)
    fixed: frozenset[str] = frozenset()   # search knobs set on the command line: no tuning
    sample: int = DEFAULT_SAMPLE


def stored_vectors(index: faiss.Index) -> Vectors | None:
    """The vectors of an `IDMap2`-wrapped index (flat, hnsw: exact; ivfpq_refine: its
    float16 copies), read in blocks; None for a type that keeps only codes (ivfpq)."""
    idmap = faiss.downcast_index(index)
    if not isinstance(idmap, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return None
    inner = idmap.index

    def get(pos: np.ndarray) -> np.ndarray:
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and np.all(np.diff(pos) == 1):
            return inner.reconstruct_n(int(pos[0]), len(pos))
        return np.stack([inner.reconstruct(int(p)) for p in pos]) if len(pos) else \
            np.zeros((0, index.d), np.float32)

    return Vectors(faiss.vector_to_array(idmap.id_map).astype(np.int64), get)


def exact_top(vectors: Vectors, qpos: np.ndarray, k: int) -> np.ndarray:
    """Positions of the exact top `k` by inner product of the vectors at `qpos`, each
    query's own position left out, [len(qpos), k]."""
    n = len(vectors)
    q = np.ascontiguousarray(vectors.get(qpos), dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_p = np.full((len(q), k), -1, np.int64)
    for s in range(0, n, TRUTH_CHUNK):
        e = min(n, s + TRUTH_CHUNK)
        scores = q @ np.asarray(vectors.get(np.arange(s, e)), dtype=np.float32).T
        inside = np.nonzero((qpos >= s) & (qpos < e))[0]
        scores[inside, qpos[inside] - s] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if e - s > k else \
            np.broadcast_to(np.arange(e - s), scores.shape)
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_p = np.concatenate([best_p, part + s], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_p = np.take_along_axis(cand_p, top, 1)
    return best_p


class _Evaluator:
    """Recall@k of the index at knob settings (each measured once), and what was tried."""

    def __init__(self, index: faiss.Index, spec: IndexSpec, vectors: Vectors,
                 qpos: np.ndarray, k: int, target: float) -> None:
        self.index, self.spec, self.k, self.target = index, spec, k, target
        self.q = np.ascontiguousarray(vectors.get(qpos), dtype=np.float32)
        self.qids = vectors.ids[qpos]
        self.truth = vectors.ids[exact_top(vectors, qpos, k)]
        self.n, self.dim = len(vectors), int(index.d)
        self.seen: dict[tuple[tuple[str, int], ...], tuple[float, float]] = {}

    def cost(self, knobs: Params) -> float:
        return self.spec.kind.search_cost(self.n, self.dim, {**self.spec.params, **knobs})

    def recall(self, knobs: Params) -> tuple[float, float]:
        """(mean recall@k over the sample, its standard error) at `knobs`."""
        key = tuple(sorted((a, int(v)) for a, v in knobs.items()))
        if key not in self.seen:
            self.spec.kind.tune(self.index, {**self.spec.params, **knobs})
            _, found = self.index.search(self.q, self.k + 1)
            found = np.where(found == self.qids[:, None], -1, found)   # not the query itself
            first = np.argsort(found < 0, axis=1, kind="stable")[:, :self.k]
            got = np.take_along_axis(found, first, 1)
            hits = (got[:, :, None] == self.truth[:, None, :]).any(-1).sum(1) / self.k
            err = float(hits.std(ddof=1) / math.sqrt(len(hits))) if len(hits) > 1 else 0.0
            self.seen[key] = (float(hits.mean()), err)
        return self.seen[key]

    def ok(self, knobs: Params) -> bool:
        mean, err = self.recall(knobs)
        return mean - MARGIN_SE * err >= self.target - 1e-9

    def best(self) -> tuple[Params, bool]:
        """The cheapest setting that reached the target, else the one of the highest recall."""
        tried = [dict(key) for key in self.seen]
        good = [t for t in tried if self.ok(t)]
        if good:
            return min(good, key=self.cost), True
        return max(tried, key=lambda t: (self.recall(t)[0], -self.cost(t))), False


def smallest(ok: Callable[[int], bool], lo: int, hi: int, start: int) -> int | None:
    """The smallest x in lo..hi with ok(x) (ok grows with x), to within 1/8, or None:
    halving or doubling from `start`, then bisection."""
    x = min(max(start, lo), hi)
    bad = lo - 1
    if ok(x):
        good = x
        while good > lo:
            y = max(lo, good // 2)
            if not ok(y):
                bad = y
                break
            good = y
    else:
        bad = x
        while True:
            if bad >= hi:
                return None
            y = min(hi, bad * 2)
            if ok(y):
                good = y
                break
            bad = y
    while good - bad > max(1, bad // BISECT_PRECISION):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return good


def _cap(ev: _Evaluator, knobs: SearchKnobs, value: int, limit: float) -> int:
    """The largest primary value whose cost with secondary `value` stays under `limit`."""
    lo, hi = knobs.lo - 1, knobs.hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ev.cost({knobs.primary: mid, str(knobs.secondary): value}) < limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _search(ev: _Evaluator, knobs: SearchKnobs, params: Params) -> None:
    """Evaluate the settings that can be the cheapest one reaching the target."""
    start = int(params[knobs.primary])
    if knobs.secondary is None:
        smallest(lambda p: ev.ok({knobs.primary: p}), knobs.lo, knobs.hi, start)
        return
    sec = knobs.secondary
    current = int(params[sec])
    values = sorted(set(knobs.values) | {current})

    def at(value: int) -> Callable[[int], bool]:
        return lambda p: ev.ok({knobs.primary: p, sec: value})

    found = smallest(at(current), knobs.lo, knobs.hi, start)
    if found is None:                      # deeper re-ranks, until one reaches the target
        for value in (v for v in values if v > current):
            found = smallest(at(value), knobs.lo, knobs.hi, knobs.hi)
            if found is not None:
                current = value
                break
    if found is None:
        return
    floor = found
    for value in sorted((v for v in values if v < current), reverse=True):
        best, _ = ev.best()
        cap = _cap(ev, knobs, value, ev.cost(best))
        if cap < floor:                    # needs at least `floor`: cannot be cheaper
            continue
        got = smallest(at(value), floor, cap, floor)
        if got is not None:
            floor = got


def tune(index: faiss.Index, spec: IndexSpec, vectors: Vectors, target: float,
         sample: int = DEFAULT_SAMPLE, seed: int = TUNE_SEED,
         label: str = "") -> tuple[IndexSpec, TuningInfo]:
    """Set `index`'s search knobs to the cheapest that reach recall@10 `target` on `sample`
    of its own vectors; returns the spec with those knobs and the record of the tuning."""
    t0 = time.perf_counter()
    knobs = spec.kind.knobs(len(vectors), spec.params)
    if knobs is None:
        raise ValueError(f"{spec.type} has no search knobs to tune")
    n = len(vectors)
    qpos = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    ev = _Evaluator(index, spec, vectors, qpos, min(K, n - 1), target)
    _search(ev, knobs, spec.params)
    best, reached = ev.best()
    chosen = {k: best[k] for k in (knobs.primary, knobs.secondary) if k is not None}
    new = IndexSpec(spec.type, {**spec.params, **chosen})
    spec.kind.tune(index, new.params)
    recall, err = ev.recall(chosen)
    info = TuningInfo(target=target, recall=round(recall, 4), stderr=round(err, 4),
                      sample=len(qpos), params=chosen, reached=reached, tried=len(ev.seen),
                      seconds=round(time.perf_counter() - t0, 2), n=n)
    (log.info if reached else log.warning)(
        "%s: %s -> recall@10 %.3f (target %.3f%s; %d queries, %d settings, %.1f s)",
        label or spec.type, ", ".join(f"{a} {v}" for a, v in chosen.items()), recall, target,
        "" if reached else ", NOT reached", info.sample, info.tried, info.seconds)
    return new, info


def settle(index: faiss.Index, spec: IndexSpec, request: TuneRequest, vectors: Vectors | None,
           old: TuningInfo | None = None, changed: int | None = None,
           label: str = "") -> tuple[IndexSpec, TuningInfo | None]:
    """The search knobs a built or updated index keeps, and their record.

    `changed`: None for a new index (a full build or a rebuild); for an index updated in
    place, the rows added plus removed. Exact types, knobs set on the command line and a
    target of 0 mean no tuning; an update keeps the tuned knobs (`old`) while the target is
    the same and under `RETUNE_DRIFT` of the rows changed since, else re-tunes.
    """
    n = int(index.ntotal)
    if spec.kind.knobs(n, spec.params) is None or n < 2:
        return spec, None
    if request.fixed & spec.kind.search_keys:
        log.info("%s: search knobs given (%s): not tuned", label or spec.type,
                 ", ".join(sorted(request.fixed & spec.kind.search_keys)))
        return spec, None
    target = request.target if request.target is not None else (
        old.target if old is not None else DEFAULT_TARGET)
    drift = (old.drift if old else 0) + (changed or 0)
    kept = replace(old, drift=drift, status="kept") if old is not None and changed is not None \
        else None
    if target <= 0:
        return spec, kept
    if kept is not None and kept.target == target and drift <= RETUNE_DRIFT * max(1, kept.n):
        return spec, kept
    if vectors is None:
        log.info("%s: %s keeps no vectors to tune on; a full build re-tunes", label, spec.type)
        return spec, kept
    return tune(index, spec, vectors, target, request.sample, label=label)
