"""Stage 1, `python -m indexer embed`: a catalog into an embeddings store (indexer/embed/store.py).

Re-running on the same EMB_DIR resumes: only ids whose image is new or changed (by content
sha256) are embedded; rows of ids that left the catalog or whose image became unreadable are
compacted away at the end, so the store always matches the catalog it was last run on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import FORMAT_VERSION
from indexer.catalog import Catalog, load_catalog
from indexer.embed.local_engine import (
    EmbedLimits,
    EmbedOutcome,
    embed_catalog,
    item_loader,
    set_threads,
)
from indexer.embed.store import DTYPES, EmbeddingStore, EmbedStats, StoreError, StoreMeta
from indexer.manifest import ModelInfo
from model import load_model
from model.attributes import AttributeSpec
from model.embedder import Embedder
from model.precision import PrecisionChoice

if TYPE_CHECKING:
    from indexer.embed.ray_engine import RayEngine

log = logging.getLogger(__name__)


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
    precision: str = "auto"             # auto: resolved where the model runs (model.precision)
    limits: EmbedLimits = field(default_factory=EmbedLimits)
    part_size: int = 1024
    dtype: str = "float32"
    progress: bool = True
    engine: str = "local"               # "local" | "ray"
    ray_address: str | None = None      # None: start a local Ray
    ray_actors: int | None = None       # None: one per GPU (one CPU actor without GPUs)


@dataclass
class EmbedRun:
    """A finished embedding run: the store, the model and what happened to each item."""

    store: EmbeddingStore
    catalog: Catalog
    model: ModelInfo
    attributes: list[AttributeSpec]
    outcome: EmbedOutcome
    stats: EmbedStats


def model_info(emb: Embedder, checkpoint: str,
               precision: PrecisionChoice | None = None) -> ModelInfo:
    """The manifest's model section for a loaded embedder whose vectors are made in
    ``precision`` (default: the embedder's own)."""
    choice = precision or emb.precision_choice
    return ModelInfo(dim=int(emb.dim), checkpoint=str(Path(checkpoint).resolve()),
                     sha256=emb.checkpoint_sha256, config=emb.config.to_dict(),
                     precision=choice.chosen, precision_choice=choice)


def job_key(model_sha: str | None, precision: str, attributes: list[str], device: str) -> str:
    """Identity of an embedding job: a resumed store never mixes models or CPU/GPU vectors."""
    doc = json.dumps([FORMAT_VERSION, model_sha, precision, attributes, device])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def load_embedder(opts: EmbedOptions) -> Embedder:
    """The model for `opts` (torch threads set first). With the Ray engine the driver's copy
    only describes the model (names, dimension, checksum): it stays on the CPU, and `auto`
    is resolved by the actors' kind of device instead (:func:`job_precision`)."""
    set_threads(opts.threads)
    ray = opts.engine == "ray"
    device = "cpu" if ray else opts.device
    precision = "fp32" if ray and opts.precision == "auto" else opts.precision
    return load_model(opts.checkpoint, device=device, precision=precision)


def job_precision(emb: Embedder, opts: EmbedOptions, engine: RayEngine | None
                  ) -> PrecisionChoice:
    """The precision the job's vectors are made in, `auto` resolved before the job key (so
    a rerun on the same kind of machine reuses the store): the local model's choice, or the
    Ray actors' (resolved once on the cluster)."""
    if engine is None:
        return emb.precision_choice
    return engine.resolve_precision(opts.checkpoint, opts.precision)


def engine_for(opts: EmbedOptions) -> contextlib.AbstractContextManager[RayEngine | None]:
    """A context that yields the Ray engine (started, and stopped on exit) or None (local)."""
    if opts.engine == "local":
        return contextlib.nullcontext()
    if opts.engine != "ray":
        raise ValueError(f"unknown engine {opts.engine!r}; known: local, ray")
    from indexer.embed.ray_engine import RayEngine

    return RayEngine(address=opts.ray_address, actors=opts.ray_actors, device=opts.device)


def _run_engine(engine: RayEngine | None, emb: Embedder, catalog: Catalog,
                store: EmbeddingStore, opts: EmbedOptions,
                previous: Mapping[str, str] | None, precision: str) -> EmbedOutcome:
    if engine is None:
        return embed_catalog(emb, catalog.items, store, previous=previous,
                             batch_size=opts.batch_size, workers=opts.workers,
                             part_size=opts.part_size, limits=opts.limits,
                             progress=opts.progress, dtype=opts.dtype)
    loader = item_loader(emb.preprocess, store, opts.limits, previous)
    return engine.embed(opts.checkpoint, list(emb.attribute_names), catalog.items, store,
                        loader, batch_size=opts.batch_size, part_size=opts.part_size,
                        dtype=opts.dtype, precision=precision, threads=opts.threads,
                        progress=opts.progress)


def _check_resumable(store: EmbeddingStore, meta: StoreMeta | None, key: str,
                     attrs: list[str]) -> None:
    """StoreError when the store holds vectors of another job (model, precision, device)."""
    if not len(store):
        return
    if meta is not None and meta.job_key not in (None, key):
        sha = (meta.model.sha256 if meta.model else None) or "?"
        raise StoreError(f"{store.root} holds embeddings of another model, precision or "
                         f"device ({sha[:12]}, {meta.device}); use a new --out or delete it")
    if store.attributes != attrs:
        raise StoreError(f"{store.root} holds attributes {store.attributes}, the model has "
                         f"{attrs}")
    log.info("resuming: %d embedded items found in %s", len(store), store.root)


def embed_into(emb: Embedder, catalog: Catalog, store: EmbeddingStore, opts: EmbedOptions, *,
               previous: Mapping[str, str] | None = None,
               engine: RayEngine | None = None) -> EmbedRun:
    """Embed `catalog` into `store` (resuming what it holds); compacts and records the run.

    `engine`: None for the local engine, or a started `RayEngine` (see `engine_for`).
    """
    if opts.dtype not in DTYPES:
        raise ValueError(f"unknown store dtype {opts.dtype!r}; known: {', '.join(DTYPES)}")
    attrs = list(emb.attribute_names)
    device = engine.device_type() if engine is not None else emb.device.type
    choice = job_precision(emb, opts, engine)
    log.info("embedding in %s (%s: %s)", choice.chosen, choice.requested, choice.reason)
    key = job_key(emb.checkpoint_sha256, choice.chosen, attrs, device)
    old = StoreMeta.read(store.root)
    _check_resumable(store, old, key, attrs)
    info = model_info(emb, opts.checkpoint, choice)
    specs = list(emb.attributes)
    meta = StoreMeta(job_key=key, model=info, attributes=specs, device=device,
                     dtype=opts.dtype)
    replace(meta, last_run=old.last_run if old else None).write(store.root)
    outcome = _run_engine(engine, emb, catalog, store, opts, previous, choice.chosen)
    live = {catalog.items[p].id for p, s in enumerate(outcome.status)
            if s in ("computed", "cached")}
    dropped = store.compact(live)
    store.write_rejects(outcome.rejects)
    stats = _run_stats(catalog, outcome, opts, dropped,
                       device if engine is not None else str(emb.device))
    replace(meta, last_run=stats).write(store.root)
    return EmbedRun(store, catalog, info, specs, outcome, stats)


def _run_stats(catalog: Catalog, outcome: EmbedOutcome, opts: EmbedOptions, dropped: int,
               device: str) -> EmbedStats:
    """store.json's `last_run` for a finished run."""
    return EmbedStats(
        catalog_path=catalog.path, catalog_sha256=catalog.sha256, entries=len(catalog),
        seconds=round(outcome.seconds, 3),
        images_per_s=round(len(catalog) / outcome.seconds, 2) if outcome.seconds else None,
        first_vectors_seconds=_rounded(outcome.first_vectors_seconds, 3),
        steady_images_per_s=_rounded(outcome.steady_images_per_s(), 2),
        computed=outcome.count("computed"), cached=outcome.count("cached"),
        unchanged=outcome.count("unchanged"), rejected=len(outcome.rejects),
        rejected_by_reason=dict(Counter(r.reason for r in outcome.rejects)),
        compacted=dropped, engine=opts.engine, device=device,
        workers=outcome.decode_workers, batch_size=opts.batch_size,
        model_threads=outcome.model_threads,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def run_embed(opts: EmbedOptions) -> EmbedRun:
    """`python -m indexer embed`: the catalog into the store at `opts.out`."""
    catalog = load_catalog(opts.catalog)
    if len(catalog) == 0:
        raise ValueError(f"catalog {opts.catalog} has no items")
    with EmbeddingStore.writer_lock(opts.out):
        emb = load_embedder(opts)
        with engine_for(opts) as engine:
            return embed_into(emb, catalog, EmbeddingStore(opts.out), opts, engine=engine)
