"""Command line.

    python -m indexer --catalog C --checkpoint K --out INDEX_DIR   embed + build (one shot)
    python -m indexer embed --catalog C --checkpoint K --out EMB_DIR
    python -m indexer build --embeddings EMB_DIR --catalog C --out INDEX_DIR

Scale-out is `--engine ray` (Ray Data, locally or on a cluster); it replaced `--shard I/N`
and `merge`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.build.budget import BudgetError, parse_size
from indexer.build.index_types import INDEX_TYPES, TYPES
from indexer.build.stage import BuildOptions, BuildResult, RejectRateError, run_build
from indexer.build.tuning import DEFAULT_SAMPLE, DEFAULT_TARGET
from indexer.catalog import CatalogError
from indexer.embed.local_engine import DEFAULT_MAX_BYTES, EmbedLimits, default_workers
from indexer.embed.stage import EmbedOptions, EmbedRun, run_embed
from indexer.embed.store import StoreError
from indexer.layout import IndexLayout, IndexLockedError
from indexer.manifest import Manifest
from indexer.pipeline import run_pipeline
from model.attributes import parse_attributes_option
from model.convert import ATTRIBUTES_HINT, self_describing
from model.imageio import DEFAULT_MAX_PIXELS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTS = 0, 1, 2, 3
COMMANDS = ("embed", "build")


def _rate(text: str) -> float:
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("a rate between 0 and 1 (or 0%..100%)")
    return value


def _recall(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a recall between 0 and 1, got {text!r}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_index_args(p: argparse.ArgumentParser) -> None:
    hnsw, ivf, refine = TYPES["hnsw"].defaults, TYPES["ivfpq"].defaults, \
        TYPES["ivfpq_refine"].defaults
    g = p.add_argument_group("index type")
    g.add_argument("--index-type", choices=["auto", *INDEX_TYPES], default=None,
                   help="flat (exact, the default for a new index), hnsw, ivfpq, ivfpq_refine "
                        "(PQ codes + exact float16 re-rank), or auto by catalog size; "
                        "--update keeps the published type unless given")
    g.add_argument("--max-memory", type=_size, metavar="SIZE",
                   help="per attribute, e.g. 512M or 4G: pick the most exact type and "
                        "parameters that fit (flat, else ivfpq_refine); recorded in the manifest")
    g.add_argument("--nlist", type=int,
                   help="ivf types: inverted lists (default ~sqrt(n), >= 39 training points each)")
    g.add_argument("--pq-m", dest="m", type=int,
                   help="ivf types: sub-quantizers (default dim/8; ivfpq_refine dim/4)")
    g.add_argument("--pq-nbits", dest="nbits", type=int,
                   help=f"ivf types: bits per code (ivfpq {ivf['nbits']} or fewer for small "
                        f"catalogs; ivfpq_refine {refine['nbits']} = fast-scan, or 8)")
    g.add_argument("--nprobe", type=int, help="ivf types: lists probed per query")
    g.add_argument("--k-factor", dest="k_factor", type=int,
                   help=f"ivfpq_refine: re-rank k x this many candidates ({refine['k_factor']})")
    g.add_argument("--opq", action="store_const", const=True, default=None,
                   help="ivfpq_refine: rotate with OPQ before PQ (better codes, slow to train)")
    g.add_argument("--train-size", type=int,
                   help=f"ivf types: training sample ({ivf['train_size']})")
    g.add_argument("--hnsw-m", dest="M", type=int, help=f"hnsw: links per node ({hnsw['M']})")
    g.add_argument("--ef-construction", dest="efConstruction", type=int,
                   help=f"hnsw ({hnsw['efConstruction']})")
    g.add_argument("--ef-search", dest="efSearch", type=int, help=f"hnsw ({hnsw['efSearch']})")
    g.add_argument("--target-recall", type=_recall, default=None, metavar="R",
                   help=f"approximate types: set nprobe / k_factor / efSearch to the cheapest "
                        f"that reach recall@10 R on {DEFAULT_SAMPLE} of the index's own "
                        f"vectors (default {DEFAULT_TARGET}; 0: no tuning; --update keeps the "
                        "recorded settings until the target or 10%% of the rows change)")
    g.add_argument("--tune-sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                   help=f"queries of the tuning sample ({DEFAULT_SAMPLE}, at most n)")


def _index_params(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("nlist", "m", "nbits", "nprobe", "k_factor", "opq", "train_size", "M",
            "efConstruction", "efSearch")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _add_attributes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attributes", default=None, metavar="SET",
                   help=f"the attributes of a published checkpoint ({ATTRIBUTES_HINT}); it "
                        "is used through a self-describing copy in .NAME.checkpoints/ beside "
                        "--out, which the manifest names for the service")


def _checkpoint(args: argparse.Namespace) -> str | None:
    """--checkpoint as the commands load it: a published checkpoint becomes its
    self-describing copy (model.convert) beside --out."""
    if args.checkpoint is None:
        return None
    attributes = parse_attributes_option(args.attributes) if args.attributes else None
    out = Path(args.out)
    path = self_describing(args.checkpoint, attributes, out.parent / f".{out.name}.checkpoints")
    if path != Path(args.checkpoint):
        logging.getLogger(__name__).info("published checkpoint %s (%s): using its "
                                         "self-describing copy %s", args.checkpoint,
                                         args.attributes, path)
    return str(path)


def _add_embed_args(p: argparse.ArgumentParser) -> None:
    _add_attributes_arg(p)
    g = p.add_argument_group("speed")
    g.add_argument("--batch-size", type=int, default=32, help="images per decoded batch (32)")
    g.add_argument("--workers", type=int, default=None,
                   help=f"decode worker processes (default {default_workers()}; 0 = inline)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads of the model (default: torch's; in a Ray CPU actor, "
                        "its node's usable CPUs)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default): bf16 where the hardware runs it natively and a "
                        "start-up check agrees with fp32, else fp32")
    g.add_argument("--checkpoint-every", type=int, default=1024, metavar="N",
                   help="commit embeddings to a resumable Parquet part every N images (1024)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (decode workers + one model in this process) or ray (Ray Data: "
                        "CPU decode tasks, one model actor per GPU)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (host:port, ray://host:10001 or auto); "
                        "default: start a local Ray")
    g.add_argument("--ray-actors", type=int, default=None, metavar="N",
                   help="model actors (default: one per GPU, or 1 without GPUs)")
    g = p.add_argument_group("safety")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"reject larger images as decompression bombs ({DEFAULT_MAX_PIXELS})")
    g.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"reject larger files ({DEFAULT_MAX_BYTES})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--update", action="store_true",
                   help="incremental: add new, re-index changed, remove deleted items")
    p.add_argument("--max-reject-rate", type=_rate, default=None, metavar="R",
                   help="exit 3 without publishing when more than R (0.05 or 5%%) is rejected")
    p.add_argument("--no-tags", action="store_true",
                   help="do not tag the items (no value per attribute, no facets, filters "
                        "on metadata only)")
    _add_index_args(p)


def one_shot_parser() -> argparse.ArgumentParser:
    """`python -m indexer --catalog C --checkpoint K --out INDEX_DIR`: embed + build."""
    p = argparse.ArgumentParser(
        prog="python -m indexer",
        description="Embed a catalog for every attribute and write one FAISS index per "
                    "attribute (embed + build in a row). Stages: `python -m indexer embed "
                    "--help`, `... build --help`.")
    p.add_argument("--catalog", required=True,
                   help="catalog CSV / JSON Lines (columns id, image, ...) or a folder of images")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    p.add_argument("--out", required=True, help="INDEX_DIR (a symlink swapped atomically)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the embeddings store (.NAME.work/) afterwards")
    _add_build_args(p)
    _add_embed_args(p)
    return p


def embed_parser() -> argparse.ArgumentParser:
    """`python -m indexer embed`: a catalog into an embeddings store."""
    p = argparse.ArgumentParser(
        prog="python -m indexer embed",
        description="Embed a catalog into an embeddings store (Parquet: id, sha256, one "
                    "vector column per attribute). Re-running resumes: only new or changed "
                    "images are embedded.")
    p.add_argument("--catalog", required=True, help="catalog CSV / JSON Lines or image folder")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    p.add_argument("--out", required=True, help="EMB_DIR, the embeddings store")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="stored vector type (float32)")
    _add_embed_args(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """`python -m indexer build`: an embeddings store and the catalog into INDEX_DIR."""
    p = argparse.ArgumentParser(
        prog="python -m indexer build",
        description="Build INDEX_DIR from an embeddings store (ours or another tool's) and "
                    "the catalog, without opening an image.")
    p.add_argument("--embeddings", required=True, help="EMB_DIR (Parquet files)")
    p.add_argument("--catalog", required=True, help="the catalog the embeddings are of")
    p.add_argument("--out", required=True, help="INDEX_DIR (a symlink swapped atomically)")
    p.add_argument("--checkpoint", default=None,
                   help="the model that made the vectors: recorded in the manifest so the "
                        "service can embed queries (needed for a store without store.json)")
    _add_attributes_arg(p)
    _add_build_args(p)
    return p


def summary(result: BuildResult) -> str:
    """Human summary of a published build."""
    m = result.manifest
    b = m.build
    reasons = Counter(r.reason for r in result.rejects)
    lines = [
        f"indexed {m.catalog.items} items x {len(m.attributes)} attributes "
        f"(dim {m.model.dim}, {m.index_type}) in {b['seconds']:.1f} s"
        f" ({b.get('images_per_s') or 0:.1f} images/s embedding)",
        f"  embedded {b['computed']}, reused {b['cached'] + b['unchanged']} "
        f"(unchanged {b['unchanged']}, cached {b['cached']}), rejected {len(result.rejects)}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
           if reasons else ""),
    ]
    sel = m.attributes[0].index.selection
    if sel:
        lines.append(f"  --max-memory: {sel['reason']}")
    lines += _tuning_lines(m)
    lines += _tag_lines(m)
    if "update" in m.extra:
        u = m.extra["update"]
        lines.append(f"  update of {u['base_version']}: +{u['added']} added, "
                     f"~{u['changed']} changed, -{u['removed']} removed")
    lines.append(f"  {result.index_dir} -> {result.version_dir} (version {m.index_version})")
    if result.rejects:
        lines.append(f"  rejected items: {result.version_dir / 'rejected.csv'}")
    return "\n".join(lines)


def _tuning_lines(m: Manifest) -> list[str]:
    """One line per attribute whose search knobs were tuned (or kept) to a recall target."""
    lines = []
    for a in m.attributes:
        t = a.index.tuning
        if t is None:
            continue
        knobs = ", ".join(f"{k} {v}" for k, v in t.params.items())
        how = (f"tuned in {t.seconds:.1f} s" if t.status == "tuned"
               else f"kept, {t.drift} rows changed since tuning")
        reached = "" if t.reached else f", target {t.target} NOT reached"
        lines.append(f"  search settings {a.name}: {knobs} -> recall@10 {t.recall:.3f} on "
                     f"{t.sample} own vectors (target {t.target}{reached}; {how})")
    return lines


def _tag_lines(m: Manifest) -> list[str]:
    """One line per tagged attribute: its labelled / predicted counts and values."""
    tags = m.extra.get("tags")
    if tags is None:
        return ["  tags: none (--no-tags)"]
    if not tags.get("items"):
        return ["  tags: none (no value prototypes: none in the checkpoint, no label column "
                "named after an attribute in the catalog)"]
    lines = []
    for attr, c in (tags.get("items") or {}).items():
        values = tags.get("values", {}).get(attr, {})
        catalog = sum(1 for v in values.values() if v.get("source") == "catalog")
        lines.append(f"  tags {attr}: {c['labelled']} labelled, {c['predicted']} predicted; "
                     f"{len(values)} values ({catalog} from the catalog's labels)")
    return lines


def embed_summary(result: EmbedRun) -> str:
    """Human summary of a finished `embed` run."""
    s = result.stats
    return (f"embedded {s.computed} of {s.entries} items "
            f"(reused {s.cached}, rejected {s.rejected}) in {s.seconds:.1f} s "
            f"-> {result.store.root} ({len(result.store)} items, {result.store.part_count} "
            "Parquet files)")


def _embed_options(args: argparse.Namespace, out: str) -> EmbedOptions:
    return EmbedOptions(
        catalog=args.catalog, checkpoint=args.checkpoint, out=out,
        batch_size=args.batch_size, workers=args.workers, threads=args.threads,
        device=args.device, precision=args.precision,
        limits=EmbedLimits(max_pixels=args.max_pixels, max_bytes=args.max_bytes),
        part_size=args.checkpoint_every, dtype=getattr(args, "dtype", "float32"),
        progress=not args.no_progress, engine=args.engine, ray_address=args.ray_address,
        ray_actors=args.ray_actors)


def _build_options(args: argparse.Namespace, embeddings: str,
                   checkpoint: str | None) -> BuildOptions:
    if args.max_memory is not None and args.index_type is not None:
        raise ValueError("--max-memory picks the index type itself; drop --index-type")
    if args.tune_sample < 1:
        raise ValueError(f"--tune-sample must be positive, got {args.tune_sample}")
    return BuildOptions(embeddings=embeddings, catalog=args.catalog, out=args.out,
                        checkpoint=checkpoint, update=args.update, index_type=args.index_type,
                        index_params=_index_params(args), max_memory=args.max_memory,
                        max_reject_rate=args.max_reject_rate, target_recall=args.target_recall,
                        tune_sample=args.tune_sample, tags=not args.no_tags)


def _run(argv: list[str]) -> int:
    command = argv[0] if argv[:1] and argv[0] in COMMANDS else None
    if command == "embed":
        args = embed_parser().parse_args(argv[1:])
        args.checkpoint = _checkpoint(args)
        print(embed_summary(run_embed(_embed_options(args, args.out))))
        return EXIT_OK
    if command == "build":
        args = build_parser().parse_args(argv[1:])
        args.checkpoint = _checkpoint(args)
        print(summary(run_build(_build_options(args, args.embeddings, args.checkpoint))))
        return EXIT_OK
    args = one_shot_parser().parse_args(argv)
    args.checkpoint = _checkpoint(args)
    work = str(IndexLayout(args.out).work)
    result = run_pipeline(_embed_options(args, work), _build_options(args, work, None),
                          keep_work=args.keep_work)
    print(summary(result.built))
    return EXIT_OK


@contextlib.contextmanager
def _progress_to_stderr() -> Iterator[None]:
    """The indexer's progress and warnings (`logging`, loggers `indexer.*`) as plain lines
    on stderr while the command runs."""
    logger = logging.getLogger("indexer")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    with _progress_to_stderr():
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    try:
        return _run(argv)
    except RejectRateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REJECTS
    except (CatalogError, StoreError, BudgetError, IndexLockedError,
            FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished Parquet parts are kept; re-run the same command to resume",
              file=sys.stderr)
        return 130
