"""Embed-stage speed of the two engines on one machine: `--engine local` against `--engine ray`.

    python bench/engines.py --items 1000 --checkpoint model/weights/demo.pt --rounds 1

Generates a synthetic catalog (`model.synth`), then runs `python -m indexer embed` on it with
each engine in turn (a fresh store every time, so nothing is reused), `--rounds` times,
alternating so both see the same machine load. Reports wall time and images/s of every run
and the ratio ray / local of the median images/s. The Ray run includes starting a local Ray,
as a user's command does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def embed(catalog: Path, checkpoint: Path, out: Path, engine: str) -> float:
    """Seconds for one `python -m indexer embed` run."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "indexer", "embed", "--catalog", str(catalog),
                    "--checkpoint", str(checkpoint), "--out", str(out), "--engine", engine,
                    "--no-progress"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--checkpoint", type=Path, default=REPO / "model" / "weights" / "demo.pt")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "model.synth", "--out", str(root / "cat"),
                        "--seed", "5", "--n-train", "0", "--n-valid", "0",
                        "--n-test", str(args.items), "--size", "256"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        catalog = root / "cat" / "catalog.csv"
        rates: dict[str, list[float]] = {"local": [], "ray": []}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for engine in ("local", "ray"):
                seconds = embed(catalog, args.checkpoint, root / f"emb-{engine}-{r}", engine)
                rates[engine].append(args.items / seconds)
                print(json.dumps({"engine": engine, "round": r, "seconds": round(seconds, 1),
                                  "images_per_s": round(args.items / seconds, 2)}), flush=True)
        local, ray = (statistics.median(rates[e]) for e in ("local", "ray"))
        print(json.dumps({"items": args.items, "local_images_per_s": round(local, 2),
                          "ray_images_per_s": round(ray, 2),
                          "ray_over_local": round(ray / local, 3),
                          "load_avg_before": [round(x, 2) for x in load_before],
                          "load_avg_after": [round(x, 2) for x in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
