"""MAP evaluation at FashionAI test scale: vectorised (model.metrics) vs a per-query loop.

Random unit vectors with random labels (fixed seed), 8 attributes with the FashionAI value
counts. The loop baseline follows the published evaluation style: per attribute one score
matrix, then per query a descending argsort and a Python loop over the ranked labels.

    python bench/map_eval.py [--queries 3600 --candidates 14400 --dim 2048] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from model.training.metrics import mean_average_precision, scores_average_precisions

FASHIONAI_VALUES = [6, 9, 8, 6, 5, 5, 10, 5]


def make_data(n_q: int, n_c: int, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random unit-norm float32 embeddings, attributes and values for queries and candidates."""
    rng = np.random.default_rng(seed)
    n_values = np.array(FASHIONAI_VALUES)

    def side(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        attr = rng.integers(0, len(n_values), n)
        val = (rng.random(n) * n_values[attr]).astype(np.int64)
        return emb, attr, val

    return (*side(n_q), *side(n_c))


def published_style_ap(sims: np.ndarray, qv: np.ndarray, cv: np.ndarray) -> float:
    """Sum of the APs of the rows of ``sims``: per query an argsort and Python loops."""
    ap_sum = 0.0
    for q in range(sims.shape[0]):
        ranked = np.argsort(sims[q])[::-1]
        labels = [1 if cv[j] == qv[q] else 0 for j in ranked]
        n_rel = sum(labels)
        if n_rel == 0:
            continue
        hits, ap = 0, 0.0
        for rank, lab in enumerate(labels, start=1):
            if lab:
                hits += 1
                ap += hits / rank
        ap_sum += ap / n_rel
    return ap_sum


def loop_map(q_emb, q_attr, q_val, c_emb, c_attr, c_val) -> float:
    """Published-style MAP (percent): one score matrix per attribute, then per-query loops."""
    total = 0.0
    for a in np.unique(q_attr):
        sims = q_emb[q_attr == a] @ c_emb[c_attr == a].T
        total += published_style_ap(sims, q_val[q_attr == a], c_val[c_attr == a])
    return 100.0 * total / q_attr.size


def score_matrices(q_emb, q_attr, q_val, c_emb, c_attr, c_val) -> list[tuple]:
    """Per attribute: (score matrix, query values, candidate values), shared by both."""
    return [(q_emb[q_attr == a] @ c_emb[c_attr == a].T, q_val[q_attr == a], c_val[c_attr == a])
            for a in np.unique(q_attr)]


def ranking_vectorised(mats: list[tuple]) -> float:
    """MAP (percent) from precomputed score matrices with model.metrics."""
    total = sum(scores_average_precisions(*m).sum() for m in mats)
    return 100.0 * total / sum(m[0].shape[0] for m in mats)


def ranking_loop(mats: list[tuple]) -> float:
    """MAP (percent) from precomputed score matrices, published style."""
    total = sum(published_style_ap(*m) for m in mats)
    return 100.0 * total / sum(m[0].shape[0] for m in mats)


def timed(fn, repeats: int) -> tuple[object, dict]:
    """Run ``fn`` ``repeats`` times: its last result and the best wall / process CPU times."""
    walls, cpus, result = [], [], None
    for _ in range(max(1, repeats)):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return result, {"wall_s": min(walls), "cpu_s": min(cpus), "runs": len(walls),
                    "wall_runs_s": walls}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queries", type=int, default=3600)
    p.add_argument("--candidates", type=int, default=14400)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="vectorised runs (best is reported)")
    p.add_argument("--loop-repeats", type=int, default=1, help="loop baseline runs")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    data = make_data(args.queries, args.candidates, args.dim, args.seed)
    res, vec = timed(lambda: mean_average_precision(*data), args.repeats)
    ref, loop = timed(lambda: loop_map(*data), args.loop_repeats)
    mats, score = timed(lambda: score_matrices(*data), args.repeats)
    rank_vec_map, rank_vec = timed(lambda: ranking_vectorised(mats), args.repeats)
    rank_loop_map, rank_loop = timed(lambda: ranking_loop(mats), args.loop_repeats)
    diff = max(abs(res.overall - ref), abs(rank_vec_map - ref), abs(rank_loop_map - ref))
    out = {
        "queries": args.queries, "candidates": args.candidates, "dim": args.dim,
        "attributes": len(FASHIONAI_VALUES), "seed": args.seed,
        "map_vectorised": res.overall, "map_loop": ref, "max_abs_diff": diff,
        "end_to_end": {"vectorised": vec, "loop": loop,
                       "speedup": loop["wall_s"] / vec["wall_s"]},
        "score_matrices": score,
        "ranking_only": {"vectorised": rank_vec, "loop": rank_loop,
                         "speedup": rank_loop["wall_s"] / rank_vec["wall_s"]},
        "cpu": cpu_model(), "nproc": os.cpu_count(), "numpy": np.__version__,
        "python": platform.python_version(), "loadavg_1min": os.getloadavg()[0],
    }
    print(f"data: {args.queries} queries, {args.candidates} candidates, {args.dim}-d, "
          f"{len(FASHIONAI_VALUES)} attributes (seed {args.seed})")
    print(f"cpu: {out['cpu']} x{out['nproc']}, numpy {np.__version__}, "
          f"load average {out['loadavg_1min']:.2f}")
    print(f"MAP vectorised {res.overall:.6f} %  loop {ref:.6f} %  max |diff| {diff:.2e}")
    rows = (("end to end, vectorised", vec), ("end to end, loop", loop),
            ("score matrices alone", score), ("ranking + AP, vectorised", rank_vec),
            ("ranking + AP, loop", rank_loop))
    for name, t in rows:
        print(f"{name:<26} wall {t['wall_s']:7.3f} s  cpu {t['cpu_s']:7.3f} s  "
              f"(best of {t['runs']})")
    print(f"speedup end to end x{out['end_to_end']['speedup']:.1f}, "
          f"ranking + AP alone x{out['ranking_only']['speedup']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if diff > 1e-6:
        print("error: the two implementations disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
