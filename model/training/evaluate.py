"""Evaluate a checkpoint on a dataset split: per-attribute and overall MAP (SPEC section 5).

    python -m model.evaluate --data DIR --checkpoint CKPT [--split test] [--json FILE]

Each query and candidate image is embedded for its own attribute; every (image, attribute)
pair is embedded once. ``--limit N`` keeps the first N queries and the first N candidates
of each attribute (quick checks). When the dataset has ``boxes.jsonl`` (synthetic data),
the attention localisation accuracy is reported too: the share of query images whose
global attention peak lies inside the ground-truth box of the queried region attribute
(at most ``--loc-limit`` images per attribute).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from model.attributes import AttributeSpec
from model.embedder import Embedder
from model.imageio import open_image
from model.osutil import available_cpus
from model.preprocess import PreparedImage
from model.training.metrics import mean_average_precision, peak_in_box
from model.training.report_output import emit_report

if TYPE_CHECKING:
    from tqdm import tqdm

    from model.training.data import Split

Triple = tuple[int, int, int]  # (image_id, attribute index, value)
T = TypeVar("T")


def _default_workers() -> int:
    """Image loading threads: two per usable CPU (decoding waits on the disk), at most 8."""
    return min(8, available_cpus() * 2)


def prefetch_batches(paths: Sequence[Path], batch_size: int, load: Callable[[Path], T],
                     workers: int) -> Iterator[tuple[int, list[T]]]:
    """Yield ``(start, [load(p) ...])`` batches, loading the next batch in a thread pool.

    At most two batches are in flight, so memory stays bounded.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        starts = iter(range(0, len(paths), batch_size))
        pending: deque[tuple[int, list[Future[T]]]] = deque()

        def submit() -> None:
            s = next(starts, None)
            if s is not None:
                pending.append((s, [pool.submit(load, p) for p in paths[s:s + batch_size]]))

        submit()
        submit()
        while pending:
            start, futures = pending.popleft()
            batch = [f.result() for f in futures]
            submit()
            yield start, batch


def _loader(emb: Embedder) -> Callable[[Path], PreparedImage]:
    """Decode and preprocess one image for ``emb`` (runs in the worker threads)."""
    return lambda path: emb.preprocess(open_image(path))


def embed_pairs(emb: Embedder, paths: Sequence[Path], attributes: Sequence[str],
                batch_size: int = 32,
                workers: int | None = None, progress: bool = False) -> np.ndarray:
    """Embed image ``paths[i]`` for ``attributes[i]``: float32 [N, dim] unit-norm rows."""
    out = np.empty((len(paths), emb.dim), dtype=np.float32)
    bar = _progress(len(paths), "embedding", progress)
    for start, batch in prefetch_batches(paths, batch_size, _loader(emb),
                                         workers or _default_workers()):
        attrs = list(attributes[start:start + len(batch)])
        out[start:start + len(batch)] = emb.embed_prepared(batch, attrs)
        bar.update(len(batch))
    bar.close()
    return out


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr,
                disable=None if enabled else True, leave=False)


def _limit_per_attribute(triples: Sequence[Triple], limit: int | None) -> list[Triple]:
    if limit is None:
        return list(triples)
    seen: dict[int, int] = {}
    kept = []
    for t in triples:
        if seen.get(t[1], 0) < limit:
            seen[t[1]] = seen.get(t[1], 0) + 1
            kept.append(t)
    return kept


def read_boxes(root: Path, split: str) -> dict[int, dict[str, list[float]]]:
    """Ground-truth region boxes of one split from ``boxes.jsonl``: image_id -> {attr: box}."""
    boxes: dict[int, dict[str, list[float]]] = {}
    with open(root / "boxes.jsonl", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec["split"] == split:
                    boxes[int(rec["image_id"])] = {str(k): [float(c) for c in v]
                                                   for k, v in rec["boxes"].items()}
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{root / 'boxes.jsonl'}:{n}: invalid record: {exc}") from exc
    return boxes


class AttentionMap(NamedTuple):
    """The global attention of one image for one attribute, with what maps it back."""

    attention: np.ndarray                         # [h, w] float32, sums to 1
    image_size: tuple[int, int]                   # original (width, height)
    crop_box: tuple[float, float, float, float]   # the model input's region of the original


def attention_maps(emb: Embedder, paths: Sequence[Path], attributes: Sequence[str],
                   batch_size: int = 32, workers: int | None = None) -> Iterator[AttentionMap]:
    """The global attention map of image ``paths[i]`` for ``attributes[i]``, in order.

    Images are decoded ahead in ``workers`` threads (:func:`prefetch_batches`), ``batch_size``
    per network pass; :func:`model.training.metrics.peak_in_box` and ``attention_peak`` /
    ``crop_point_to_original`` read the maps.
    """
    for start, batch in prefetch_batches(paths, batch_size, _loader(emb),
                                         workers or _default_workers()):
        names = attributes[start:start + len(batch)]
        res = emb.forward_prepared(batch, [emb.attribute_index(a) for a in names])
        maps = res.attention.float().cpu().numpy()
        for prep, att in zip(batch, maps, strict=True):
            geom = prep.geometry
            yield AttentionMap(att, (geom.width, geom.height), geom.crop_box())


def localisation(emb: Embedder, split: Split, queries: Sequence[Triple], attr_names: Sequence[str],
                 boxes: dict[int, dict[str, list[float]]], loc_limit: int, batch_size: int = 32,
                 workers: int | None = None) -> dict[str, Any] | None:
    """Attention localisation accuracy (percent) per region attribute and overall."""
    picked: list[tuple[int, str, list[float]]] = []
    per_attr_n: dict[str, int] = {}
    for image_id, a, _ in queries:
        name = attr_names[a]
        box = boxes.get(image_id, {}).get(name)
        if box is None or per_attr_n.get(name, 0) >= loc_limit:
            continue
        per_attr_n[name] = per_attr_n.get(name, 0) + 1
        picked.append((image_id, name, box))
    if not picked:
        return None
    paths = [split.image_paths[i] for i, _, _ in picked]
    names = [n for _, n, _ in picked]
    hits: dict[str, int] = {}
    stream = attention_maps(emb, paths, names, batch_size, workers)
    for (_, name, box), (att, size, crop) in zip(picked, stream, strict=True):
        hits[name] = hits.get(name, 0) + int(peak_in_box(att, size, box, crop))
    order = [n for n in attr_names if n in per_attr_n]
    return {
        "overall": 100.0 * sum(hits.values()) / len(picked),
        "per_attribute": {n: 100.0 * hits.get(n, 0) / per_attr_n[n] for n in order},
        "counts": {n: per_attr_n[n] for n in order},
    }


PARTS = ("full", "global", "local")


def embedding_part(vecs: np.ndarray, part: str, global_dim: int) -> np.ndarray:
    """The fused embedding (``full``), or one branch's block of it renormalised.

    The output is ``concat(sqrt(b) g/|g|, sqrt(1-b) l/|l|)`` (SPEC section 2): ``global``
    ranks by the leading block alone, ``local`` by the trailing one.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    if part == "full":
        return vecs
    if vecs.shape[1] <= global_dim:
        if part == "global":
            return vecs
        raise ValueError("this model has no local branch to evaluate")
    block = vecs[:, :global_dim] if part == "global" else vecs[:, global_dim:]
    return block / np.linalg.norm(block, axis=1, keepdims=True).clip(1e-12)


def evaluate_split(emb: Embedder, root: str | Path, split: str = "test", batch_size: int = 32,
                   limit: int | None = None, loc_limit: int = 200, workers: int | None = None,
                   progress: bool = False, part: str = "full",
                   attributes: Sequence[AttributeSpec] | None = None) -> dict[str, Any]:
    """MAP (and localisation when ``boxes.jsonl`` exists) of ``emb`` on one split.

    ``part``: rank by the whole embedding or by one branch's block (:func:`embedding_part`).
    ``attributes``: the dataset's attributes (default: its own description, ``read_attributes``).
    """
    from model.training.data import load_split, read_attributes

    root = Path(root)
    specs = list(attributes) if attributes is not None else read_attributes(root)
    attr_names = [a.name for a in specs]
    data = load_split(root, split, attributes=specs)
    queries = _limit_per_attribute(data.queries, limit)
    candidates = _limit_per_attribute(data.candidates, limit)
    if not queries:
        raise ValueError(f"{root}: split {split!r} has no queries")
    unknown = sorted({attr_names[a] for _, a, _ in queries + candidates}
                     - set(emb.attribute_names))
    if unknown:
        raise ValueError(f"dataset attributes {unknown} are not in the checkpoint's "
                         f"{emb.attribute_names}")

    t0 = time.perf_counter()
    pairs = sorted({(i, a) for i, a, _ in queries + candidates})
    row = {p: n for n, p in enumerate(pairs)}
    vecs = embed_pairs(emb, [data.image_paths[i] for i, _ in pairs],
                       [attr_names[a] for _, a in pairs], batch_size, workers, progress)
    vecs = embedding_part(vecs, part, emb.config.global_branch.out_dim)
    t_embed = time.perf_counter() - t0

    def side(triples: Sequence[Triple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.array([row[(i, a)] for i, a, _ in triples], dtype=np.int64)
        return vecs[idx], np.array([t[1] for t in triples]), np.array([t[2] for t in triples])

    result = mean_average_precision(*side(queries), *side(candidates), attr_names=attr_names)
    report: dict[str, Any] = result.to_dict()
    report.update(split=split, part=part, data=str(root), dim=int(emb.dim),
                  images_embedded=len(pairs), embed_seconds=round(t_embed, 3))
    if (root / "boxes.jsonl").exists():
        loc = localisation(emb, data, queries, attr_names, read_boxes(root, split), loc_limit,
                           batch_size, workers)
        if loc is not None:
            report["localisation"] = loc
    return report


def format_report(report: dict[str, Any]) -> str:
    """Plain-text table: attribute, #queries, #candidates, MAP % (+ localisation)."""
    q, c = report["counts"]["queries"], report["counts"]["candidates"]
    width = max([len("attribute"), len("overall")] + [len(n) for n in q])
    lines = [f"{'attribute':<{width}}  {'queries':>8}  {'candidates':>10}  {'MAP %':>7}"]
    for name, value in report["per_attribute"].items():
        lines.append(f"{name:<{width}}  {q[name]:>8}  {c[name]:>10}  {value:>7.2f}")
    lines.append(f"{'overall':<{width}}  {sum(q.values()):>8}  {sum(c.values()):>10}  "
                 f"{report['overall']:>7.2f}")
    loc = report.get("localisation")
    if loc:
        lines += ["", "attention localisation (attention peak inside the ground-truth box):",
                  f"{'attribute':<{width}}  {'images':>8}  {'peak in box %':>13}"]
        for name, value in loc["per_attribute"].items():
            lines.append(f"{name:<{width}}  {loc['counts'][name]:>8}  {value:>13.2f}")
        lines.append(f"{'overall':<{width}}  {sum(loc['counts'].values()):>8}  "
                     f"{loc['overall']:>13.2f}")
    return "\n".join(lines)


def dataset_attributes(data: Path, option: str | None) -> list[AttributeSpec]:
    """The attributes of the dataset folder ``data``: its own description (attributes.json,
    attributes.txt, or the authors' meta.json there or in its parent), else ``--attributes``
    (``option``: a built-in set or a comma-separated list). ValueError when both exist and
    name different attributes, or neither exists."""
    from model.attributes import parse_attributes_option, resolve_attributes
    from model.training.data import DataError, find_attributes, read_attributes

    if not data.is_dir():
        raise DataError(f"{data}: dataset folder not found")
    given = resolve_attributes(parse_attributes_option(option)) if option else None
    found = find_attributes(data)
    if found is None:
        return given if given is not None else read_attributes(data)  # its DataError says why
    if given is not None and [a.name for a in given] != [a.name for a in found]:
        raise DataError(f"--attributes {option} names {[a.name for a in given]}, but {data} "
                        f"describes {[a.name for a in found]}; drop --attributes or fix one")
    return found


def _load_embedder(args: argparse.Namespace, attributes: Sequence[AttributeSpec]) -> Embedder:
    """The checkpoint's model; a published one (no attribute names) gets ``attributes``."""
    from model import load_model
    from model.attributes import parse_attributes_option
    from model.checkpoint import FORMAT, read_checkpoint_file

    kwargs = dict(device=args.device, precision=args.precision, batch_size=args.batch_size)
    if args.attributes:
        return load_model(args.checkpoint, attributes=parse_attributes_option(args.attributes),
                          **kwargs)
    if read_checkpoint_file(args.checkpoint).get("format") == FORMAT:
        return load_model(args.checkpoint, **kwargs)
    return load_model(args.checkpoint, attributes=attributes, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="dataset folder (SPEC section 6)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--attributes", default=None,
                   help="attribute names for a published checkpoint and a dataset folder "
                        "without a description: FashionAI, DARN, DeepFashion or a "
                        "comma-separated list (default: the dataset's attributes.json, "
                        "attributes.txt or meta.json)")
    p.add_argument("--limit", type=int, default=None,
                   help="keep the first N queries and N candidates per attribute")
    p.add_argument("--loc-limit", type=int, default=200,
                   help="at most N images per attribute for the localisation accuracy")
    p.add_argument("--workers", type=int, default=None, help="image loading threads")
    p.add_argument("--part", default="full", choices=PARTS,
                   help="rank by the whole embedding (default) or by the global or local "
                        "branch's block of it alone")
    p.add_argument("--task", default="retrieval", choices=TASKS,
                   help="retrieval: MAP (default); tagging: tag accuracy and calibration "
                        "(model.training.tagging_eval); manipulation: ADDE's attribute "
                        "manipulation protocol (model.training.manipulation_eval); "
                        "`--task tagging --help` lists each task's options")
    return p


TASKS = ("retrieval", "tagging", "manipulation")


def _other_task(argv: Sequence[str] | None) -> tuple[str, list[str]]:
    """``--task`` and the remaining arguments, for the tasks with a parser of their own."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default="retrieval", choices=TASKS)
    known, rest = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.task, rest


def main(argv: Sequence[str] | None = None) -> int:
    task, rest = _other_task(argv)
    if task == "tagging":
        from model.training import tagging_eval
        return tagging_eval.main(rest)
    if task == "manipulation":
        from model.training import manipulation_eval
        return manipulation_eval.main(rest)
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "limit", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.loc_limit < 0:
        print("error: --loc-limit must be >= 0", file=sys.stderr)
        return 2
    try:
        attributes = dataset_attributes(args.data, args.attributes)
        emb = _load_embedder(args, attributes)
        report = evaluate_split(emb, args.data, args.split, args.batch_size, args.limit,
                                args.loc_limit, args.workers, progress=True, part=args.part,
                                attributes=attributes)
    except (OSError, ValueError) as exc:  # CheckpointError, ImageError, bad data are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report["checkpoint"] = str(args.checkpoint)
    emit_report(report, f"checkpoint {args.checkpoint}  split {args.split}  part {args.part}  "
                        f"dim {report['dim']}\n{format_report(report)}", args.json)
    return 0


__all__ = ["AttentionMap", "attention_maps", "dataset_attributes", "embed_pairs",
           "embedding_part", "evaluate_split", "format_report", "localisation", "main",
           "prefetch_batches", "read_boxes"]

if __name__ == "__main__":
    raise SystemExit(main())
