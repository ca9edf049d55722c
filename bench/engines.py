"""Embed-stage speed of the two engines on one machine: `--engine local` against `--engine ray`.

    python bench/engines.py --items 1000 --checkpoint model/weights/demo.pt --rounds 1

Generates a synthetic catalog (`model.synth`; or takes `--catalog`), waits for the load
average to fall under 1, then runs `python -m indexer embed` on it with
each engine in turn (a fresh store every time, so nothing is reused), `--rounds` times,
alternating so both see the same machine load. Reports images/s of every run three ways: the
whole command (Python, the model and, for Ray, starting a local Ray), its embedding phase
as the store records it, and that phase's steady rate after the first vectors came back
(without the start of the decode workers and the model actors: a fixed cost of seconds,
docs/SCALING.md); and the ratios ray / local of the medians.
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

from indexer.catalog import load_catalog

REPO = Path(__file__).resolve().parents[1]

PARTS = ("command", "embedding", "steady")


def embed(catalog: Path, checkpoint: Path, out: Path, engine: str) -> tuple[float, dict]:
    """Seconds of one `python -m indexer embed` run (the whole command), and the run as the
    store records it: its embedding phase (without starting Python, the model and Ray), the
    start-up inside that phase (until the first vectors) and the steady rate after it."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "indexer", "embed", "--catalog", str(catalog),
                    "--checkpoint", str(checkpoint), "--out", str(out), "--engine", engine,
                    "--no-progress"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "store.json").read_text())["last_run"]


def settle(limit_s: float = 300.0) -> None:
    """Wait (up to `limit_s`) for the 1-minute load average to fall under 1: generating the
    catalog loads the machine, and a figure taken under load is not a result."""
    end = time.monotonic() + limit_s
    while os.getloadavg()[0] >= 1.0 and time.monotonic() < end:
        time.sleep(5)


def make_catalog(root: Path, items: int) -> Path:
    subprocess.run([sys.executable, "-m", "model.synth", "--out", str(root / "cat"),
                    "--seed", "5", "--n-train", "0", "--n-valid", "0",
                    "--n-test", str(items), "--size", "256"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return root / "cat" / "catalog.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--checkpoint", type=Path, default=REPO / "model" / "weights" / "demo.pt")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--catalog", type=Path,
                   help="an existing catalog to embed (default: generate --items images)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = args.catalog or make_catalog(root, args.items)
        if args.catalog:                    # any format `indexer embed --catalog` reads
            args.items = len(load_catalog(catalog))
        settle()
        rates: dict[tuple[str, str], list[float]] = {}
        load_before = os.getloadavg()
        for r in range(args.rounds):
            for engine in ("local", "ray"):
                wall, run = embed(catalog, args.checkpoint, root / f"emb-{engine}-{r}", engine)
                rates.setdefault((engine, "command"), []).append(args.items / wall)
                rates.setdefault((engine, "embedding"), []).append(args.items / run["seconds"])
                rates.setdefault((engine, "steady"), []).append(run["steady_images_per_s"])
                print(json.dumps({"engine": engine, "round": r, "seconds": round(wall, 1),
                                  "images_per_s": round(args.items / wall, 2),
                                  "embedding_seconds": round(run["seconds"], 1),
                                  "embedding_images_per_s": round(args.items / run["seconds"], 2),
                                  "first_vectors_seconds": run["first_vectors_seconds"],
                                  "steady_images_per_s": run["steady_images_per_s"]}),
                      flush=True)
        med = {key: statistics.median(v) for key, v in rates.items()}
        print(json.dumps({"items": args.items,
                          **{f"{e}_{part}_images_per_s": round(med[e, part], 2)
                             for e in ("local", "ray") for part in PARTS},
                          **{f"ray_over_local_{part}": round(
                              med["ray", part] / med["local", part], 3) for part in PARTS},
                          "load_avg_before": [round(x, 2) for x in load_before],
                          "load_avg_after": [round(x, 2) for x in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
