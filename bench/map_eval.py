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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.metrics import mean_average_precision  # noqa: E402

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


def loop_map(q_emb, q_attr, q_val, c_emb, c_attr, c_val) -> float:
    """Published-style MAP (percent): per-query argsort and a Python loop for each AP."""
    total, count = 0.0, 0
    for a in np.unique(q_attr):
        qe, qv = q_emb[q_attr == a], q_val[q_attr == a]
        ce, cv = c_emb[c_attr == a], c_val[c_attr == a]
        sims = qe @ ce.T
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
        total += 100.0 * ap_sum  # = per-attribute MAP x its query count
        count += sims.shape[0]
    return total / count


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
    p.add_argument("--repeats", type=int, default=3, help="vectorised runs (best is reported)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    data = make_data(args.queries, args.candidates, args.dim, args.seed)
    vec_times = []
    for _ in range(max(1, args.repeats)):
        t0 = time.perf_counter()
        res = mean_average_precision(*data)
        vec_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = loop_map(*data)
    loop_s = time.perf_counter() - t0
    vec_s = min(vec_times)
    diff = abs(res.overall - ref)
    out = {
        "queries": args.queries, "candidates": args.candidates, "dim": args.dim,
        "attributes": len(FASHIONAI_VALUES), "seed": args.seed,
        "map_vectorised": res.overall, "map_loop": ref, "abs_diff": diff,
        "vectorised_s": vec_s, "vectorised_runs_s": vec_times, "loop_s": loop_s,
        "speedup": loop_s / vec_s,
        "cpu": cpu_model(), "nproc": os.cpu_count(), "numpy": np.__version__,
        "python": platform.python_version(),
    }
    print(f"data: {args.queries} queries, {args.candidates} candidates, {args.dim}-d, "
          f"{len(FASHIONAI_VALUES)} attributes (seed {args.seed})")
    print(f"cpu: {out['cpu']} x{out['nproc']}, numpy {np.__version__}")
    print(f"MAP vectorised {res.overall:.6f} %  loop {ref:.6f} %  |diff| {diff:.2e}")
    print(f"vectorised: {vec_s:.3f} s (best of {len(vec_times)})  loop: {loop_s:.3f} s  "
          f"speedup x{out['speedup']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if diff > 1e-6:
        print("error: the two implementations disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
