"""Command line: `python -m indexer --catalog C --checkpoint K --out DIR` and `... merge`."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from indexer.build import BuildOptions, BuildResult, RejectRateError, run_build
from indexer.catalog import CatalogError, parse_shard
from indexer.embedding_job import DEFAULT_MAX_BYTES, EmbedLimits, default_workers
from indexer.faiss_index import INDEX_TYPES
from indexer.layout import IndexLockedError
from indexer.merge import MergeError, merge_shards
from model.imageio import DEFAULT_MAX_PIXELS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTS = 0, 1, 2, 3


def _rate(text: str) -> float:
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("a rate between 0 and 1 (or 0%..100%)")
    return value


def _add_index_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("index type")
    g.add_argument("--index-type", choices=["auto", *INDEX_TYPES], default=None,
                   help="flat (exact, the default for a new index), hnsw, ivfpq, or auto by "
                        "catalog size; --update keeps the published type unless given")
    g.add_argument("--nlist", type=int, help="ivfpq: inverted lists (default ~4*sqrt(n))")
    g.add_argument("--pq-m", dest="m", type=int, help="ivfpq: sub-quantizers (default dim/8)")
    g.add_argument("--pq-nbits", dest="nbits", type=int, help="ivfpq: bits per code (8)")
    g.add_argument("--nprobe", type=int, help="ivfpq: lists probed per query")
    g.add_argument("--train-size", type=int, help="ivfpq: training sample (100000)")
    g.add_argument("--hnsw-m", dest="M", type=int, help="hnsw: links per node (32)")
    g.add_argument("--ef-construction", dest="efConstruction", type=int, help="hnsw (80)")
    g.add_argument("--ef-search", dest="efSearch", type=int, help="hnsw (128)")


def _index_params(args: argparse.Namespace) -> dict:
    keys = ("nlist", "m", "nbits", "nprobe", "train_size", "M", "efConstruction", "efSearch")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer",
        description="Embed a catalog for every attribute and write one FAISS index per "
                    "attribute. `python -m indexer merge --help` combines --shard outputs.")
    p.add_argument("--catalog", required=True,
                   help="catalog CSV / JSON Lines (columns id, image, ...) or a folder of images")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    p.add_argument("--out", required=True, help="INDEX_DIR (a symlink swapped atomically)")
    p.add_argument("--update", action="store_true",
                   help="incremental: add new, re-embed changed, remove deleted items")
    p.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="process the I-th (0-based) of N contiguous catalog slices")
    _add_index_args(p)
    g = p.add_argument_group("speed")
    g.add_argument("--batch-size", type=int, default=32, help="images per decoded batch (32)")
    g.add_argument("--workers", type=int, default=None,
                   help=f"decode worker processes (default {default_workers()}; 0 = inline)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--checkpoint-every", type=int, default=1024, metavar="N",
                   help="commit embeddings to a resumable shard every N images (1024)")
    g = p.add_argument_group("safety")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"reject larger images as decompression bombs ({DEFAULT_MAX_PIXELS})")
    g.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"reject larger files ({DEFAULT_MAX_BYTES})")
    g.add_argument("--max-reject-rate", type=_rate, default=None, metavar="R",
                   help="exit 3 without publishing when more than R (0.05 or 5%%) is rejected")
    g.add_argument("--keep-work", action="store_true", help="keep embedding shards afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indexer merge",
                                description="Merge the outputs of --shard I/N runs.")
    p.add_argument("shards", nargs="+", help="the shards' INDEX_DIRs (any order)")
    p.add_argument("--out", required=True, help="merged INDEX_DIR")
    _add_index_args(p)
    return p


def summary(result: BuildResult) -> str:
    """Human summary of a finished build."""
    m, o = result.manifest, result.outcome
    b = m["build"]
    reasons = Counter(r.reason for r in o.rejects)
    lines = [
        f"indexed {m['catalog']['items']} items x {len(m['attributes'])} attributes "
        f"(dim {m['model']['dim']}, {m['attributes'][0]['index']['type']}) in {b['seconds']:.1f} s"
        f" ({b['images_per_s'] or 0:.1f} images/s embedding)",
        f"  embedded {b['computed']}, reused {b['cached'] + b['unchanged']} "
        f"(unchanged {b['unchanged']}, cached {b['cached']}), rejected {len(o.rejects)}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
           if reasons else ""),
    ]
    if "update" in m:
        u = m["update"]
        lines.append(f"  update of {u['base_version']}: +{u['added']} added, "
                     f"~{u['changed']} changed, -{u['removed']} removed")
    lines.append(f"  {result.index_dir} -> {result.version_dir} (version {m['index_version']})")
    if o.rejects:
        lines.append(f"  rejected items: {result.version_dir / 'rejected.csv'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["merge"]:
            args = merge_parser().parse_args(argv[1:])
            merge_shards(args.shards, args.out, args.index_type,
                         _index_params(args) or None)
            return EXIT_OK
        args = build_parser().parse_args(argv)
        opts = BuildOptions(
            catalog=args.catalog, checkpoint=args.checkpoint, out=args.out,
            update=args.update, shard=args.shard, index_type=args.index_type,
            index_params=_index_params(args), batch_size=args.batch_size,
            workers=args.workers, threads=args.threads, device=args.device,
            precision=args.precision,
            limits=EmbedLimits(max_pixels=args.max_pixels, max_bytes=args.max_bytes),
            max_reject_rate=args.max_reject_rate, shard_size=args.checkpoint_every,
            keep_work=args.keep_work, progress=not args.no_progress)
        result = run_build(opts)
        print(summary(result))
        return EXIT_OK
    except RejectRateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REJECTS
    except (CatalogError, MergeError, IndexLockedError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; re-run the same command to resume",
              file=sys.stderr)
        return 130
