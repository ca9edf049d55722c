"""Embedding throughput: every attribute of a catalog image, naive vs shared trunk.

    python bench/embed.py [--config paper] [--images 16] [--precision fp32 bf16 auto] [--json OUT]

(a) naive: the published evaluation's way, one full forward per (image, attribute) pair;
(b) shared: each image's global trunk once, attention heads and local branch per attribute.
Same random weights, same images, same run. Also the achieved GFLOP/s of (b), against this
machine's measured fp32 matmul GFLOP/s, and for reduced precision the cosine to fp32.
``--precision auto`` resolves as the service and the indexer do (model/precision.py): its
row names the precision chosen and why, and the machine line the CPU's bf16 support.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from model import build_model
from model.embedder import Embedder
from model.precision import ISA_CAP_VARIABLES, cpu_bf16_support


def catalog_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Portrait catalog-like images with some structure (random noise + blocks)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 255, (320, 256, 3), dtype=np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, 280), rng.integers(0, 220)
            arr[y:y + 40, x:x + 36] = rng.integers(0, 255, 3)
        out.append(Image.fromarray(arr))
    return out


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10, trials: int = 5) -> float:
    """Best of ``trials`` timings of ``reps`` fp32 n x n matmuls (the machine's usable peak)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(a, b, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately so both see the same load."""
    a()
    b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def bench(config: str, n_images: int, precision: str, device: str | None, repeats: int,
          batch_size: int | None, reference: np.ndarray | None = None) -> dict:
    torch.manual_seed(0)
    net = build_model(config, "FashionAI")
    started = time.perf_counter()
    emb = Embedder(net, device=device, precision=precision, batch_size=batch_size,
                   fuse=True)  # as load_model serves it
    setup_s = time.perf_counter() - started    # with auto: its start-up check
    images = catalog_images(n_images)
    prepared = emb.prepare(images)
    n_attr = len(emb.attributes)
    pairs_img = [p for p in prepared for _ in range(n_attr)]
    pairs_attr = list(range(n_attr)) * n_images

    def naive():
        return emb.embed_prepared(pairs_img, pairs_attr)

    def shared():
        return emb.embed_all_prepared(prepared)

    t_naive, t_shared = timed_pair(naive, shared, emb.device, repeats)
    out_shared = shared()
    agree = float(np.abs(naive().reshape(out_shared.shape) - out_shared).max())
    with FlopCounterMode(display=False) as counter:
        shared()
    flops = counter.get_total_flops()
    result = {
        "config": config, "precision": precision, "device": str(emb.device),
        "precision_chosen": emb.precision, "precision_reason": emb.precision_choice.reason,
        "setup_s": setup_s,
        "images": n_images, "attributes": n_attr, "batch_size": batch_size,
        "naive_images_per_s": n_images / t_naive,
        "shared_images_per_s": n_images / t_shared,
        "speedup": t_naive / t_shared,
        "max_abs_diff_naive_vs_shared": agree,
        "shared_gflop_per_image": flops / n_images / 1e9,
        "shared_gflops_achieved": flops / t_shared / 1e9,
    }
    if reference is not None:
        cos = (out_shared * reference).sum(-1)
        result["cosine_to_fp32_min"] = float(cos.min())
        result["cosine_to_fp32_mean"] = float(cos.mean())
    result["_embeddings"] = out_shared
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="paper")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch-size", type=int, help="rows per forward (the embedder's default)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--device")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    machine = {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": "native" if (bf16 := cpu_bf16_support()).native else "not native",
        "cpu_bf16_detail": bf16.detail,
        **{v.lower(): os.environ[v] for v in ISA_CAP_VARIABLES if v in os.environ},
        "matmul_fp32_gflops": matmul_gflops(device),
    }
    print(json.dumps(machine))
    # cosine is printed with 6 decimals: a rounded 1.0 would hide reduced-precision error
    results, reference = [], None
    for precision in args.precision:
        r = bench(args.config, args.images, precision, args.device, args.repeats,
                  args.batch_size, reference)
        if precision == "fp32":
            reference = r["_embeddings"]
        del r["_embeddings"]
        r["share_of_matmul_peak"] = r["shared_gflops_achieved"] / machine["matmul_fp32_gflops"]
        results.append(r)
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
