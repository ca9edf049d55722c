"""Batch indexer benchmarks (issue 4).

    python bench/index.py [--part pipeline index] [--images 96] [--naive-images 16]
                          [--config cpu] [--checkpoint CKPT] [--sizes 100000 1000000]
                          [--hnsw-max 100000] [--json OUT] [--md OUT]

(a) pipeline: catalog images per second, all attributes, of the indexer's job (parallel
    decoding workers + one shared-trunk pass per image, `python -m indexer`) against the
    naive pipeline (decode, then one full forward per image and attribute, one process).
    Same checkpoint, same images, same run; the embeddings of both are compared too.
(b) index: for each index type at each size of synthetic 2048-d unit vectors (a 64-d latent
    structure plus noise, like learned embeddings): bytes per vector, build time, single
    query latency, recall@10 against exact search. HNSW above --hnsw-max is extrapolated
    from the largest measured size (O(n log n) build, O(log n) search), and marked so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from indexer.build import faiss_index as fx

DIM = 2048
CHUNK = 65_536


# -- (a) pipeline ----------------------------------------------------------------------------
def _checkpoint(args, tmp: Path, attrs) -> Path:
    from model import build_model, save_checkpoint

    if args.checkpoint:
        return Path(args.checkpoint)
    demo = Path(__file__).resolve().parents[1] / "model" / "weights" / "demo.pt"
    if args.config == "demo" and demo.exists():
        return demo
    ckpt = tmp / f"{args.config}.pt"
    save_checkpoint(build_model("cpu" if args.config == "demo" else args.config, attrs), ckpt)
    return ckpt


def bench_pipeline(args) -> dict:
    import torch

    from indexer.build.stage import BuildOptions
    from indexer.embed.stage import EmbedOptions
    from indexer.layout import IndexLayout
    from indexer.pipeline import run_pipeline
    from model import AttributeSpec, load_model
    from model.imageio import open_image
    from model.training.synth import generate

    tmp = Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        data = tmp / "data"
        generate(data, seed=0, n_train=args.images - 4, n_valid=2, n_test=2, size=256)
        attrs = [AttributeSpec(a["name"], a["n_values"])
                 for a in json.loads((data / "attributes.json").read_text())]
        ckpt = _checkpoint(args, tmp, attrs)
        emb = load_model(ckpt, device="cpu")
        names = emb.attribute_names
        lines = (data / "catalog.csv").read_text().splitlines()[1:]
        paths = [str(data / ln.split(",")[1]) for ln in lines]

        # naive: decode, then a full forward per (image, attribute), single process
        emb.embed([open_image(paths[0])], [names[0]])            # warm-up
        naive = np.empty((args.naive_images, len(names), emb.dim), np.float32)
        t0 = time.perf_counter()
        for i, p in enumerate(paths[:args.naive_images]):
            img = open_image(p)
            for a, name in enumerate(names):
                naive[i, a] = emb.embed([img], [name])[0]
        naive_s = time.perf_counter() - t0
        naive_ips = args.naive_images / naive_s

        runs = []
        for workers in args.workers:
            out = tmp / f"idx{workers}"
            work = str(IndexLayout(out).work)
            embed = EmbedOptions(catalog=str(data / "catalog.csv"), checkpoint=str(ckpt),
                                 out=work, workers=workers, batch_size=args.batch_size,
                                 device="cpu", progress=False)
            build = BuildOptions(embeddings=work, catalog=embed.catalog, out=str(out))
            res = run_pipeline(embed, build).built
            b = res.manifest.build
            ids, vecs = fx.extract(faiss.read_index(str(out / f"{names[0]}.faiss")))
            diff = float(np.abs(vecs[np.argsort(ids)][:args.naive_images] - naive[:, 0]).max())
            runs.append({"workers": workers, "batch_size": args.batch_size,
                         "embed_images_per_s": len(paths) / b["embed_seconds"],
                         "end_to_end_images_per_s": len(paths) / b["seconds"],
                         "seconds": b["seconds"], "max_abs_diff_vs_naive": diff})
        best = max(r["embed_images_per_s"] for r in runs)
        return {"checkpoint": str(ckpt), "config": emb.config.name, "dim": emb.dim,
                "attributes": len(names), "images": len(paths),
                "naive_images": args.naive_images, "naive_images_per_s": naive_ips,
                "torch_threads": torch.get_num_threads(), "runs": runs,
                "speedup": best / naive_ips}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- (b) index types -------------------------------------------------------------------------
class Vectors:
    """Deterministic synthetic unit vectors: chunk i depends only on (seed, i).

    Like learned embeddings: clustered in a 64-d latent space (2,000 clusters, spread 0.5
    around unit-variance centres), projected to 2048-d, plus isotropic noise (~5% energy).
    """

    def __init__(self, seed: int = 0, latent: int = 64, clusters: int = 2000,
                 spread: float = 0.5, noise: float = 2.0) -> None:
        rng = np.random.default_rng(seed)
        self.seed, self.spread, self.noise = seed, spread, noise
        self.proj = rng.standard_normal((latent, DIM), dtype=np.float32)
        self.centres = rng.standard_normal((clusters, latent), dtype=np.float32)

    def chunk(self, i: int, n: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, i])
        z = self.centres[rng.integers(0, len(self.centres), n)]
        z += rng.standard_normal(z.shape, dtype=np.float32) * self.spread
        x = z @ self.proj
        x += rng.standard_normal((n, DIM), dtype=np.float32) * self.noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def iter(self, n: int):
        for i, s in enumerate(range(0, n, CHUNK)):
            yield s, self.chunk(i, min(CHUNK, n - s))


def _latency(index, q: np.ndarray, n: int) -> tuple[float, float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        index.search(q[i:i + 1], 10)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / truth.shape[1]
                          for g, t in zip(got, truth, strict=True)]))


def _size_on_disk(index, tmp: Path) -> int:
    path = tmp / "probe.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def _measure(kind: str, spec: fx.IndexSpec, n: int, gen: Vectors, q: np.ndarray,
             truth: np.ndarray | None, tmp: Path, lat_queries: int) -> tuple[dict, np.ndarray]:
    """Build, size, time and score one index; `truth` None means this one is exact."""
    index = fx.new_index(spec, DIM)
    t_train = 0.0
    if not index.is_trained:
        sample = gen.chunk(0, min(n, int(spec.params.get("train_size", CHUNK))), stream=7)
        t0 = time.perf_counter()
        index.train(sample)
        t_train = time.perf_counter() - t0
        del sample
    t_add = 0.0
    for s, x in gen.iter(n):
        t0 = time.perf_counter()
        index.add_with_ids(x, np.arange(s, s + len(x), dtype=np.int64))
        t_add += time.perf_counter() - t0
    _, got = index.search(q, 10)
    p50, p95 = _latency(index, q, lat_queries)
    if kind == "flat" and n > 200_000:
        size, how = n * (DIM * 4 + 8) + 1000, "formula"    # don't write 8 GB just to measure
    else:
        size, how = _size_on_disk(index, tmp), "file"
    del index
    truth = got if truth is None else truth
    return {"n": n, "type": kind, "params": spec.params, "bytes_per_vector": size / n,
            "size_from": how, "train_s": t_train, "build_s": t_train + t_add,
            "latency_p50_ms": p50, "latency_p95_ms": p95, "recall_at_10": _recall(got, truth),
            "measured": True}, truth


def _extrapolate(row: dict, n: int) -> dict:
    f = (n / row["n"]) * (math.log(n) / math.log(row["n"]))
    g = math.log(n) / math.log(row["n"])
    return {**row, "n": n, "build_s": row["build_s"] * f,
            "latency_p50_ms": row["latency_p50_ms"] * g,
            "latency_p95_ms": row["latency_p95_ms"] * g, "recall_at_10": None,
            "measured": False, "extrapolated_from": row["n"]}


def bench_index(args) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="bench_faiss_"))
    gen = Vectors(seed=0)
    q = gen.chunk(0, args.queries, stream=1)
    rows: list[dict] = []
    try:
        for n in args.sizes:
            t0 = time.perf_counter()
            flat, truth = _measure("flat", fx.resolve_spec("flat", n, DIM), n, gen, q, None,
                                   tmp, args.flat_latency_queries)   # exact: the ground truth
            rows.append(flat)
            print(f"  n={n} flat done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            if n <= args.hnsw_max:
                spec = fx.resolve_spec("hnsw", n, DIM)
                rows.append(_measure("hnsw", spec, n, gen, q, truth, tmp,
                                     args.latency_queries)[0])
            else:
                done = [r for r in rows if r["type"] == "hnsw" and r["measured"]]
                if done:
                    rows.append(_extrapolate(done[-1], n))
            print(f"  n={n} hnsw done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            for m in (args.pq_m if n <= args.hnsw_max else args.big_pq_m):
                spec = fx.resolve_spec("ivfpq", n, DIM, {"m": m})
                rows.append(_measure("ivfpq", spec, n, gen, q, truth, tmp,
                                     args.latency_queries)[0])
                print(f"  n={n} ivfpq m={m} done ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# -- report ----------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    out = [f"Machine: {result['machine']}; faiss {faiss.__version__}, "
           f"{faiss.omp_get_max_threads()} OpenMP threads; load average at start "
           f"{result['load_at_start']}.", ""]
    p = result.get("pipeline")
    if p:
        out += [f"### Catalog images per second ({p['config']} config, {p['attributes']} "
                f"attributes, dim {p['dim']}, CPU, torch threads {p['torch_threads']})", "",
                "| pipeline | workers | batch | images/s | vs naive |",
                "|---|---|---|---|---|",
                f"| naive: full forward per image x attribute, 1 process "
                f"({p['naive_images']} images) | 0 | 1 | {p['naive_images_per_s']:.2f} | 1.0x |"]
        for r in p["runs"]:
            out.append(f"| indexer: decode workers + shared trunk ({p['images']} images) | "
                       f"{r['workers']} | {r['batch_size']} | {r['embed_images_per_s']:.2f} "
                       f"(end to end {r['end_to_end_images_per_s']:.2f}) | "
                       f"{r['embed_images_per_s'] / p['naive_images_per_s']:.1f}x |")
        diff = max(r["max_abs_diff_vs_naive"] for r in p["runs"])
        out += ["", f"Largest difference between the two pipelines' embeddings: {diff:.2e}.", ""]
    rows = result.get("index")
    if rows:
        out += ["### Index types (synthetic unit vectors, 2048-d)", "",
                "| vectors | type | params | bytes/vector | build s | p50 ms | p95 ms | "
                "recall@10 | |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            params = ", ".join(f"{k}={v}" for k, v in r["params"].items()
                               if k != "train_size") or "-"
            rec = "-" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
            how = "measured" if r["measured"] else f"extrapolated from {r['extrapolated_from']:,}"
            out.append(f"| {r['n']:,} | {r['type']} | {params} | {r['bytes_per_vector']:,.0f} | "
                       f"{r['build_s']:.1f} | {r['latency_p50_ms']:.2f} | "
                       f"{r['latency_p95_ms']:.2f} | {rec} | {how} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", nargs="+", default=["pipeline", "index"],
                    choices=["pipeline", "index"])
    ap.add_argument("--images", type=int, default=96, help="catalog images for the indexer")
    ap.add_argument("--naive-images", type=int, default=16, help="images for the naive run")
    ap.add_argument("--config", default="demo",
                    help="demo (model/weights/demo.pt, else random 'cpu'), cpu, paper or tiny")
    ap.add_argument("--checkpoint", help="use this checkpoint instead")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--hnsw-max", type=int, default=100_000,
                    help="largest size at which HNSW is built (above: extrapolated)")
    ap.add_argument("--pq-m", type=int, nargs="+", default=[64, 256],
                    help="ivfpq sub-quantizers to try (sizes <= --hnsw-max)")
    ap.add_argument("--big-pq-m", type=int, nargs="+", default=[64],
                    help="ivfpq sub-quantizers to try above --hnsw-max")
    ap.add_argument("--queries", type=int, default=200, help="queries for recall@10")
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--flat-latency-queries", type=int, default=20)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write the markdown tables here")
    args = ap.parse_args(argv)
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                               f"{os.cpu_count()} cores",
                    "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    if "pipeline" in args.part:
        result["pipeline"] = bench_pipeline(args)
        print(markdown({**result, "index": None}), flush=True)
    if "index" in args.part:
        result["index"] = bench_index(args)
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = markdown(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
