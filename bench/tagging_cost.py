"""What tagging costs `indexer build` (issue 22: at most 10% on the demo catalog).

    python bench/tagging_cost.py [--catalog demo-data/catalog/catalog.csv]
                                 [--checkpoint model/weights/demo.pt] [--repeats 5]
                                 [--one-shot-repeats 3] [--json OUT]

In one run, on the same catalog and checkpoint, alternating so that a busy moment hits both:
(a) `python -m indexer build` from one embeddings store (made once by `python -m indexer
    embed`), with tags and with `--no-tags`: the stage tagging adds to;
(b) the one-shot `python -m indexer --catalog ... --checkpoint ...` (embed + build, what the
    demo runs), with tags and with `--no-tags`.
Each command is a fresh process, timed from start to exit (wall) and by the manifest's own
build timing (`build.index_seconds`: the build stage in the process). Prints the medians and
the ratios with / without tags. Run it on a quiet machine (no figures in the docs from a busy
one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = ROOT / "demo-data" / "catalog" / "catalog.csv"
DEFAULT_CHECKPOINT = ROOT / "model" / "weights" / "demo.pt"
COMMON = ("--no-progress", "--workers", "0")


def _run(cmd: list[str]) -> float:
    """Run an indexer command; its wall time in seconds (SystemExit with its output)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                         f"{proc.stderr}")
    return seconds


def _index_seconds(out: Path) -> float:
    manifest = json.loads((out / "manifest.json").read_text())
    return float(manifest["build"]["index_seconds"])


def _fresh(out: Path) -> Path:
    """An INDEX_DIR with nothing published yet (each build is a full one)."""
    for p in (out, out.with_name(f".{out.name}.versions"), out.with_name(f".{out.name}.work")):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
    return out


def _pair(commands: dict[str, list[str]], outs: dict[str, Path], repeats: int
          ) -> dict[str, dict[str, list[float]]]:
    """Run each variant `repeats` times, alternating; wall and in-process build seconds."""
    times: dict[str, dict[str, list[float]]] = {v: {"wall": [], "build": []} for v in commands}
    for r in range(repeats):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))
        for variant in order:
            _fresh(outs[variant])
            times[variant]["wall"].append(_run(commands[variant]))
            times[variant]["build"].append(_index_seconds(outs[variant]))
    return times


def _report(name: str, times: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    med = {v: {k: statistics.median(x) for k, x in t.items()} for v, t in times.items()}
    out = {"tags_wall_s": med["tags"]["wall"], "no_tags_wall_s": med["no_tags"]["wall"],
           "tags_build_s": med["tags"]["build"], "no_tags_build_s": med["no_tags"]["build"],
           "wall_ratio": med["tags"]["wall"] / med["no_tags"]["wall"],
           "build_ratio": med["tags"]["build"] / med["no_tags"]["build"]}
    print(f"{name}: wall {out['tags_wall_s']:.2f} s with tags vs {out['no_tags_wall_s']:.2f} s "
          f"without -> x{out['wall_ratio']:.3f}; build stage {out['tags_build_s']:.3f} s vs "
          f"{out['no_tags_build_s']:.3f} s -> x{out['build_ratio']:.3f}"
          f" (medians of {len(times['tags']['wall'])})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--repeats", type=int, default=5, help="build-stage runs per variant")
    p.add_argument("--one-shot-repeats", type=int, default=3,
                   help="one-shot runs per variant (0: skip)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    if not args.catalog.is_file():
        raise SystemExit(f"no catalog at {args.catalog}: make the demo's (`make demo "
                         "DEMO_ARGS=--check`) or pass --catalog")
    py = [sys.executable, "-m", "indexer"]
    work = Path(tempfile.mkdtemp(prefix="tagging-cost-"))
    try:
        emb = work / "emb"
        _run([*py, "embed", "--catalog", str(args.catalog), "--checkpoint",
              str(args.checkpoint), "--out", str(emb), *COMMON])
        outs = {"tags": work / "idx-tags", "no_tags": work / "idx-none"}
        build = [*py, "build", "--embeddings", str(emb), "--catalog", str(args.catalog),
                 "--checkpoint", str(args.checkpoint)]
        results = {"build": _report("indexer build (from the store)", _pair(
            {"tags": [*build, "--out", str(outs["tags"])],
             "no_tags": [*build, "--out", str(outs["no_tags"]), "--no-tags"]},
            outs, args.repeats))}
        if args.one_shot_repeats > 0:
            one = [*py, "--catalog", str(args.catalog), "--checkpoint", str(args.checkpoint),
                   *COMMON]
            results["one_shot"] = _report("python -m indexer (embed + build)", _pair(
                {"tags": [*one, "--out", str(outs["tags"])],
                 "no_tags": [*one, "--out", str(outs["no_tags"]), "--no-tags"]},
                outs, args.one_shot_repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"catalog": str(args.catalog), **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
