"""Index size, build time, recall, latency and resident memory of `build --max-memory`.

Synthetic unit vectors written as an embeddings store (no model, no images), then `python
-m indexer build` for each budget, then a fresh process opens the index with
`CatalogIndex` and measures what serving costs. Prints one JSON line per build:

    python bench/scaling.py --n 20000 --dim 256 --budgets none 4M 2M
    python bench/scaling.py --n 1000000 --dim 2048 --budgets none 512M --generator structured
    python bench/scaling.py --n 100000 --dim 2048 --budgets none 48M --k-factors 10 20 50

Generators: `clusters` (cluster centres plus isotropic noise: every direction carries the
same variance) and `structured` (the clusters live in a 256-dimensional subspace with a
power-law spectrum, projected into D dimensions plus a little isotropic noise: most of the
variance in few directions, as in a network's embeddings). Vectors are generated in chunks
from per-chunk seeds, stored as float16, and the exact top 10 is computed chunk by chunk on
the stored values, so 1M x 2048 needs no 8 GB array in this process.

Measured per budget: build time (the whole `indexer build` command), the resident anonymous
memory the serving process gains by opening the index and answering the queries
(`RssAnon` of /proc/self/status, so memory-mapped vectors in the page cache do not count),
the p50 and p95 latency of one query through `CatalogIndex.search`, and recall@10 against
exact inner product (the queries are catalog vectors, as in a search by item, so each one's
own vector is among its true 10); with `--k-factors`, latency and recall again at each of
those re-rank depths of the compressed index (`CatalogIndex.set_search_params`, no rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from vectorkit import ExactTop10, answer_all, rss_anon, write_id_catalog

REPO = Path(__file__).resolve().parents[1]

CHUNK = 50_000
LATENT = 256


def _chunk(generator: str, start: int, n: int, dim: int, seed: int) -> np.ndarray:
    """Rows ``start .. start + n`` of the dataset (float16-rounded, unit-norm, float32)."""
    shared = np.random.default_rng([seed, 0])            # the same centres for every chunk
    rng = np.random.default_rng([seed, 1, start])
    n_centres = 1000
    if generator == "clusters":
        centres = shared.standard_normal((n_centres, dim), dtype=np.float32)
        x = centres[rng.integers(0, n_centres, n)]
        x += 0.4 * rng.standard_normal((n, dim), dtype=np.float32)
    elif generator == "structured":
        spectrum = (np.arange(1, LATENT + 1, dtype=np.float32) ** -0.75)
        basis = shared.standard_normal((LATENT, dim), dtype=np.float32) / np.sqrt(LATENT)
        centres = shared.standard_normal((n_centres, LATENT), dtype=np.float32)
        z = centres[rng.integers(0, n_centres, n)]
        z += 0.5 * rng.standard_normal((n, LATENT), dtype=np.float32)
        x = (z * spectrum) @ basis
        x += 0.02 * rng.standard_normal((n, dim), dtype=np.float32)
    else:
        raise ValueError(f"unknown generator {generator!r}")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


def write_dataset(root: Path, generator: str, n: int, dim: int, queries: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Store and catalog under ``root``; returns the queries and their exact top 10."""
    from indexer.embed.store import EmbeddingStore

    store = EmbeddingStore(root / "emb")
    qpos = np.sort(np.random.default_rng([seed, 2]).choice(n, queries, replace=False))
    q = np.zeros((queries, dim), np.float32)
    for s in range(0, n, CHUNK):
        x = _chunk(generator, s, min(CHUNK, n - s), dim, seed)
        ids = [f"i{k}" for k in range(s, s + len(x))]
        store.write(ids, ids, x[:, None, :], ["a"], dtype="float16")
        inside = (qpos >= s) & (qpos < s + len(x))
        q[inside] = x[qpos[inside] - s]
        del x
    truth = ExactTop10(q)
    for s in range(0, n, CHUNK):       # the queries are known only once every chunk is seen
        truth.add(s, _chunk(generator, s, min(CHUNK, n - s), dim, seed))
    write_id_catalog(root, n)
    return q, truth.rows


def serve_measure(index_dir: Path, queries: Path, truth: Path,
                  k_factors: list[int] | None = None) -> dict:
    """In a fresh process: open, answer every query once, report memory, latency, recall;
    then the same at each other re-rank depth in `k_factors` (a search-time knob)."""
    from indexer.reader import CatalogIndex

    q, top = np.load(queries), np.load(truth)
    before = rss_anon()
    with CatalogIndex.open(index_dir) as idx:
        opened = rss_anon()
        info = idx.manifest.attributes[0].index
        measured = answer_all(idx, q, top)
        after = rss_anon()
        n = int(info.ntotal)
        gained = after - before
        out = {"type": info.type, "params": info.params,
               "memory_formula_bytes": info.memory_bytes,
               "rss_anon_open_bytes": opened - before, "rss_anon_bytes": gained,
               "bytes_per_vector": round(gained / n, 1),
               "index_file_bytes": (index_dir / info.file).stat().st_size, **measured}
        if k_factors and "k_factor" in info.params:
            sweep = {}
            for f in k_factors:
                idx.set_search_params("a", k_factor=f)
                sweep[f] = answer_all(idx, q, top)
            out["k_factor_sweep"] = sweep
        return out


def run(generator: str, n: int, dim: int, budgets: list[str], queries: int,
        root: Path, k_factors: list[int], target_recall: str | None = None) -> list[dict]:
    t0 = time.perf_counter()
    q, top = write_dataset(root, generator, n, dim, queries)
    np.save(root / "q.npy", q)
    np.save(root / "top.npy", top)
    prepare_s = time.perf_counter() - t0
    out = []
    for b in budgets:
        idx_dir = root / f"idx-{b}"
        extra = [] if b == "none" else ["--max-memory", b]
        if target_recall is not None:
            extra += ["--target-recall", target_recall]
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", "indexer", "build", "--embeddings",
                             str(root / "emb"), "--catalog", str(root / "catalog.csv"),
                             "--out", str(idx_dir), *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL).returncode
        seconds = time.perf_counter() - t0
        row = {"generator": generator, "n": n, "dim": dim, "budget": b,
               "prepare_s": round(prepare_s, 1)}
        if rc != 0:
            out.append({**row, "exit": rc})
            print(json.dumps(out[-1]), flush=True)
            continue
        child = subprocess.run([sys.executable, __file__, "--serve-measure", str(idx_dir),
                                str(root / "q.npy"), str(root / "top.npy"),
                                "--k-factors", *map(str, k_factors)], cwd=REPO,
                               capture_output=True, text=True, check=True)
        out.append({**row, "build_s": round(seconds, 1), **json.loads(child.stdout)})
        print(json.dumps(out[-1]), flush=True)
        _remove_versions(idx_dir)              # disk: a 1M x 2048 flat index is 8 GB
    return out


def _remove_versions(index_dir: Path) -> None:
    for p in index_dir.parent.glob(f".{index_dir.name}.*"):
        shutil.rmtree(p, ignore_errors=True)
    index_dir.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--budgets", nargs="+", default=["none", "4M", "2M"])
    p.add_argument("--generator", nargs="+", choices=["clusters", "structured"],
                   default=["clusters"])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--tmp", type=Path, help="scratch folder (default: the system's)")
    p.add_argument("--k-factors", nargs="*", type=int, default=[],
                   help="also measure compressed indexes at these re-rank depths (k x F "
                        "candidates re-ranked exactly), e.g. 30 100")
    p.add_argument("--target-recall", default=None, metavar="R",
                   help="passed to `indexer build` (default: its own, 0.95; 0: the knobs' "
                        "formula defaults, as docs/SCALING.md's tables were built)")
    p.add_argument("--serve-measure", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_measure:
        print(json.dumps(serve_measure(*args.serve_measure, args.k_factors)))
        return 0
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]}), flush=True)
    for gen in args.generator:
        with tempfile.TemporaryDirectory(prefix="bench_scaling_", dir=args.tmp) as tmp:
            run(gen, args.n, args.dim, args.budgets, args.queries, Path(tmp), args.k_factors,
                args.target_recall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
