"""Stage 1, `python -m indexer embed`: a catalog into an embeddings store (indexer/store.py).

Re-running on the same EMB_DIR resumes: only ids whose image is new or changed (by content
sha256) are embedded; rows of ids that left the catalog or whose image became unreadable are
compacted away at the end, so the store always matches the catalog it was last run on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from indexer import FORMAT_VERSION
from indexer.catalog import Catalog, load_catalog
from indexer.embed.local_engine import (
    EmbedLimits,
    EmbedOutcome,
    embed_catalog,
    item_loader,
    set_threads,
)
from indexer.embed.store import DTYPES, EmbeddingStore, StoreError
from indexer.manifest import ModelInfo
from model import load_model

Say = Callable[[str], None]


@dataclass
class EmbedOptions:
    """The `embed` flags (also used by the one-shot command)."""

    catalog: str
    checkpoint: str
    out: str
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    device: str | None = None
    precision: str = "fp32"
    limits: EmbedLimits = field(default_factory=EmbedLimits)
    part_size: int = 1024
    dtype: str = "float32"
    progress: bool = True
    engine: str = "local"               # "local" | "ray"
    ray_address: str | None = None      # None: start a local Ray
    ray_actors: int | None = None       # None: one per GPU (one CPU actor without GPUs)


@dataclass
class EmbedResult:
    """A finished embedding run: the store, the model and what happened to each item."""

    store: EmbeddingStore
    catalog: Catalog
    model: ModelInfo
    attributes: list[dict]          # [{"name", "n_values"}]
    outcome: EmbedOutcome
    stats: dict


def model_info(emb, checkpoint: str) -> ModelInfo:
    """The manifest's model section for a loaded embedder."""
    return ModelInfo(dim=int(emb.dim), checkpoint=str(Path(checkpoint).resolve()),
                     sha256=emb.checkpoint_sha256, config=emb.config.to_dict(),
                     precision=emb.precision)


def job_key(model_sha: str, precision: str, attributes: list[str], device: str) -> str:
    """Identity of an embedding job: a resumed store never mixes models or CPU/GPU vectors."""
    doc = json.dumps([FORMAT_VERSION, model_sha, precision, attributes, device])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def load_embedder(opts: EmbedOptions):
    """The model for `opts` (torch threads set first). With the Ray engine the driver's copy
    only describes the model (names, dimension, checksum): it stays on the CPU."""
    set_threads(opts.threads)
    device = "cpu" if opts.engine == "ray" else opts.device
    return load_model(opts.checkpoint, device=device, precision=opts.precision)


def engine_for(opts: EmbedOptions) -> contextlib.AbstractContextManager:
    """A context that yields the Ray engine (started, and stopped on exit) or None (local)."""
    if opts.engine == "local":
        return contextlib.nullcontext()
    if opts.engine != "ray":
        raise ValueError(f"unknown engine {opts.engine!r}; known: local, ray")
    from indexer.embed.ray_engine import RayEngine

    return RayEngine(address=opts.ray_address, actors=opts.ray_actors, device=opts.device)


def _run_engine(engine, emb, catalog: Catalog, store: EmbeddingStore, opts: EmbedOptions,
                previous: Mapping[str, str] | None) -> EmbedOutcome:
    if engine is None:
        return embed_catalog(emb, catalog.items, store, previous=previous,
                             batch_size=opts.batch_size, workers=opts.workers,
                             part_size=opts.part_size, limits=opts.limits,
                             progress=opts.progress, dtype=opts.dtype)
    loader = item_loader(emb.preprocess, store, opts.limits, previous)
    return engine.embed(opts.checkpoint, list(emb.attribute_names), catalog.items, store,
                        loader, batch_size=opts.batch_size, part_size=opts.part_size,
                        dtype=opts.dtype, precision=opts.precision, threads=opts.threads,
                        progress=opts.progress)


def embed_into(emb, catalog: Catalog, store: EmbeddingStore, opts: EmbedOptions, *,
               previous: Mapping[str, str] | None = None, engine=None,
               say: Say | None = None) -> EmbedResult:
    """Embed `catalog` into `store` (resuming what it holds); compacts and records the run.

    `engine`: None for the local engine, or a started `RayEngine` (see `engine_for`).
    """
    say = say or (lambda msg: print(msg, file=sys.stderr))
    if opts.dtype not in DTYPES:
        raise ValueError(f"unknown store dtype {opts.dtype!r}; known: {', '.join(DTYPES)}")
    attrs = list(emb.attribute_names)
    device = engine.device_type() if engine is not None else emb.device.type
    key = job_key(emb.checkpoint_sha256, emb.precision, attrs, device)
    meta = store.read_meta()
    if len(store) and meta.get("job_key") not in (None, key):
        raise StoreError(f"{store.root} holds embeddings of another model, precision or "
                         f"device ({meta.get('model', {}).get('sha256', '?')[:12]}, "
                         f"{meta.get('device')}); use a new --out or delete it")
    if len(store) and store.attributes != attrs:
        raise StoreError(f"{store.root} holds attributes {store.attributes}, the model has "
                         f"{attrs}")
    if len(store):
        say(f"resuming: {len(store)} embedded items found in {store.root}")
    info = model_info(emb, opts.checkpoint)
    attr_docs = [{"name": a.name, "n_values": int(a.n_values)} for a in emb.attributes]
    base_meta = {"job_key": key, "model": info.to_dict(), "attributes": attr_docs,
                 "device": device, "dtype": opts.dtype}
    store.write_meta({**meta, **base_meta})
    outcome = _run_engine(engine, emb, catalog, store, opts, previous)
    live = {catalog.items[p].id for p, s in enumerate(outcome.status)
            if s in ("computed", "cached")}
    dropped = store.compact(live)
    store.write_rejects(outcome.rejects)
    stats = {
        "catalog": {"path": catalog.path, "sha256": catalog.sha256, "entries": len(catalog)},
        "seconds": round(outcome.seconds, 3),
        "images_per_s": round(len(catalog) / outcome.seconds, 2) if outcome.seconds else None,
        "first_vectors_seconds": _rounded(outcome.first_vectors_seconds, 3),
        "steady_images_per_s": _rounded(outcome.steady_images_per_s(), 2),
        "computed": outcome.count("computed"), "cached": outcome.count("cached"),
        "unchanged": outcome.count("unchanged"), "rejected": len(outcome.rejects),
        "rejected_by_reason": dict(Counter(r.reason for r in outcome.rejects)),
        "compacted": dropped, "engine": opts.engine,
        "device": device if engine is not None else str(emb.device),
        "workers": outcome.decode_workers,
        "batch_size": opts.batch_size, "model_threads": outcome.model_threads,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.write_meta({**base_meta, "last_run": stats})
    return EmbedResult(store, catalog, info, attr_docs, outcome, stats)


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def run_embed(opts: EmbedOptions, say: Say | None = None) -> EmbedResult:
    """`python -m indexer embed`: the catalog into the store at `opts.out`."""
    catalog = load_catalog(opts.catalog)
    if len(catalog) == 0:
        raise ValueError(f"catalog {opts.catalog} has no items")
    with EmbeddingStore.writer_lock(opts.out):
        emb = load_embedder(opts)
        with engine_for(opts) as engine:
            return embed_into(emb, catalog, EmbeddingStore(opts.out), opts, engine=engine,
                              say=say)
