"""Index size, build time, recall and latency of `build` with and without `--max-memory`.

Synthetic clustered unit vectors written as an embeddings store (no model, no images), then
`python -m indexer build` for each budget. Prints one JSON line per build:

    python bench/scaling.py --n 20000 --dim 256 --budgets none 4M 2M
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.cli import main as indexer  # noqa: E402
from indexer.reader import CatalogIndex  # noqa: E402
from indexer.store import EmbeddingStore  # noqa: E402


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(2, n // 100), dim))
    x = centers[rng.integers(0, len(centers), n)] + 0.4 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run(n: int, dim: int, budgets: list[str], queries: int, root: Path) -> list[dict]:
    x = vectors(n, dim)
    ids = [f"i{k}" for k in range(n)]
    store = EmbeddingStore(root / "emb")
    for s in range(0, n, 50_000):
        store.write(ids[s:s + 50_000], ids[s:s + 50_000], x[s:s + 50_000, None, :], ["a"])
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image"])
        w.writerows([i, f"{i}.jpg"] for i in ids)
    q = x[np.random.default_rng(1).choice(n, queries, replace=False)]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    out = []
    for b in budgets:
        idx_dir = root / f"idx-{b}"
        extra = [] if b == "none" else ["--max-memory", b]
        t0 = time.perf_counter()
        rc = indexer(["build", "--embeddings", str(root / "emb"), "--catalog",
                      str(root / "catalog.csv"), "--out", str(idx_dir), *extra])
        seconds = time.perf_counter() - t0
        if rc != 0:
            out.append({"budget": b, "exit": rc})
            continue
        with CatalogIndex.open(idx_dir) as idx:
            info = idx.manifest.attributes[0].index
            lat, recall = [], []
            for i in range(queries):
                t = time.perf_counter()
                hits = idx.search("a", q[i:i + 1], 10)[0]
                lat.append(time.perf_counter() - t)
                got = {int(h.id[1:]) for h, _ in hits}
                recall.append(len(got & set(truth[i].tolist())) / 10)
        out.append({"n": n, "dim": dim, "budget": b, "type": info.type, "params": info.params,
                    "memory_bytes": info.memory_bytes,
                    "file_bytes": (idx_dir / info.file).stat().st_size,
                    "build_s": round(seconds, 2), "recall_at_10": round(float(np.mean(recall)), 4),
                    "p50_ms": round(statistics.median(lat) * 1000, 3)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--budgets", nargs="+", default=["none", "4M", "2M"])
    p.add_argument("--queries", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        for b in args.budgets:
            for row in run(args.n, args.dim, [b], args.queries, Path(tmp) / b):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
