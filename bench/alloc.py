"""Heap tuning (`model.memory.keep_freed_memory`) against glibc's defaults.

    python bench/alloc.py [--rounds 3] [--steps 30] [--json OUT]

Each round starts two fresh processes, one with the tuning and one without (the order
alternates), and each measures on the `cpu` configuration with random weights:
(a) a stage-1 training step as `model.train` runs it on a frozen trunk's cached outputs
    (32 triplets: 96 trunk outputs of 96 x 28 x 28, forward and backward of the global head);
(b) `Embedder.embed_each_prepared` on a batch of 8 images (one attribute each), on a worker
    thread as the service runs it, and on 1 image.
Wall and system time per step or image, medians over rounds, and the ratios default/tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def child(tuned: bool, steps: int) -> dict:
    if tuned:
        from model.memory import keep_freed_memory
        assert keep_freed_memory(), "the heap tuning did not apply on this machine"
    import numpy as np
    import torch
    from PIL import Image

    from model import build_model
    from model.attributes import AttributeSpec
    from model.embedder import Embedder
    from model.training.train import triplet_losses

    torch.manual_seed(0)
    attrs = [AttributeSpec(f"a{i}", 4) for i in range(6)]
    net = build_model("cpu", attrs).to(memory_format=torch.channels_last)
    head = net.choices["global"]
    head.basenet.requires_grad_(False)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():                     # the frozen trunk's output shape, cached in training
        shape = net.trunk(torch.zeros(1, 3, 224, 224)).shape[1:]
    feats = torch.randn(96, *shape)
    attr = torch.arange(96) % len(attrs)

    def step() -> None:
        g, _ = net.global_head(feats, attr)
        loss = triplet_losses(*g.split(32), 0.2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn, n: int, per: int) -> tuple[float, float]:
        fn()
        t0, r0 = time.perf_counter(), os.times()
        for _ in range(n):
            fn()
        r1 = os.times()
        return ((time.perf_counter() - t0) / n / per * 1000,
                (r1.system - r0.system) / n / per * 1000)

    out = {}
    out["train_step_ms"], out["train_step_sys_ms"] = timed(step, steps, 1)
    emb = Embedder(net.eval(), device="cpu", fuse=False)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (320, 256, 3), dtype=np.uint8))
              for _ in range(8)]
    prepared = emb.prepare(images)
    with ThreadPoolExecutor(1) as pool:
        for n in (1, 8):
            def embed(n: int = n) -> None:
                pool.submit(emb.embed_each_prepared, prepared[:n], [["a1"]] * n).result()
            key = f"embed_batch{n}"
            out[f"{key}_ms_per_image"], out[f"{key}_sys_ms_per_image"] = timed(
                embed, max(3, steps // n), n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=["tuned", "default"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "tuned", args.steps)))
        return 0
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for mode in (("default", "tuned") if r % 2 == 0 else ("tuned", "default")):
            proc = subprocess.run([sys.executable, __file__, "--child", mode,
                                   "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(mode, runs[mode][-1], flush=True)
    med = {mode: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
           for mode, rs in runs.items()}
    ratios = {k: med["default"][k] / med["tuned"][k] for k in med["default"]
              if "sys_ms" not in k}
    print("\n| measure | default glibc | tuned | default / tuned |\n|---|---:|---:|---:|")
    for k in med["default"]:
        ratio = f"{ratios[k]:.2f}x" if k in ratios else ""
        print(f"| {k} | {med['default'][k]:.1f} | {med['tuned'][k]:.1f} | {ratio} |")
    info = {"python": platform.python_version(), "machine": platform.processor(),
            "cpus": os.cpu_count(), "load_avg_before": load_before,
            "load_avg_after": os.getloadavg()}
    print(f"\nload average before {load_before}, after {info['load_avg_after']}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "runs": runs, "median": med,
                                         "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
