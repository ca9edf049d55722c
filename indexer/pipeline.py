"""The one-shot command, `python -m indexer --catalog C --checkpoint K --out DIR`: embed, then
build, with the embeddings store kept beside INDEX_DIR (`.NAME.work/<job key>/`) until the new
version is published, so a killed job resumes where it stopped.

With `--update` the embedding step skips items whose image hash equals the published
index's (their vectors stay in the index), and the build step updates that index. Either way
the live changes of the journal beside INDEX_DIR are folded in (indexer/live/fold.py).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace

from indexer.build.stage import BuildOptions, BuildResult, EmbedFacts, RejectRateError, run_build
from indexer.catalog import load_catalog
from indexer.embed.stage import (
    EmbedOptions,
    EmbedRun,
    embed_into,
    engine_for,
    job_key,
    job_precision,
    load_embedder,
)
from indexer.embed.store import EmbeddingStore
from indexer.items import read_item_hashes
from indexer.layout import IndexLayout
from indexer.live.fold import prepare_fold
from indexer.manifest import Manifest
from model.embedder import Embedder


@dataclass
class PipelineResult:
    """Both stages' results."""

    embedded: EmbedRun
    built: BuildResult


def _published_hashes(layout: IndexLayout, emb: Embedder) -> dict[str, str] | None:
    """id -> sha256 of the published index when it was built by this model, else None."""
    folder = layout.current()
    if folder is None:
        return None
    manifest = Manifest.read(folder)
    if (manifest.model.sha256 != emb.checkpoint_sha256
            or manifest.attribute_names != list(emb.attribute_names)):
        return None
    return {i: sha for i, (_, sha) in read_item_hashes(folder).items()}


def _work_store(layout: IndexLayout, key: str) -> EmbeddingStore:
    """The job's store, `.NAME.work/<key>/`; stores of other jobs there are deleted."""
    if layout.work.exists():
        for other in layout.work.iterdir():
            if other.name != key:
                shutil.rmtree(other, ignore_errors=True)
    return EmbeddingStore(layout.work / key)


def run_pipeline(embed_opts: EmbedOptions, build_opts: BuildOptions, *,
                 keep_work: bool = False) -> PipelineResult:
    """Embed the catalog and build INDEX_DIR from the result."""
    started = time.perf_counter()
    catalog = load_catalog(embed_opts.catalog)
    if len(catalog) == 0:
        raise ValueError(f"catalog {embed_opts.catalog} has no items")
    layout = IndexLayout(build_opts.out)
    with layout, engine_for(embed_opts) as engine:
        live = prepare_fold(layout, catalog)     # the journal up to now, over the catalog
        catalog = live.apply(catalog)
        emb = load_embedder(embed_opts)
        previous = _published_hashes(layout, emb) if build_opts.update else None
        device = engine.device_type() if engine is not None else emb.device.type
        precision = job_precision(emb, embed_opts, engine).chosen
        key = job_key(emb.checkpoint_sha256, precision, list(emb.attribute_names), device)
        store = _work_store(layout, key)
        embedded = embed_into(emb, catalog, store, embed_opts, previous=previous,
                              engine=engine)
        outcome = embedded.outcome
        if len(outcome.rejects) == len(catalog):
            raise RejectRateError(f"all {len(catalog)} catalog items were rejected; "
                                  "nothing published")
        unchanged = {catalog.items[p].id for p, s in enumerate(outcome.status)
                     if s == "unchanged"}
        built = run_build(replace(build_opts, embeddings=str(store.root)), catalog=catalog,
                          layout=layout, facts=EmbedFacts(unchanged, embedded.stats, started),
                          live=live, values=(emb.prototypes, emb.calibration))
        if not keep_work:
            store.remove()
            if layout.work.exists() and not any(layout.work.iterdir()):
                layout.work.rmdir()
    return PipelineResult(embedded, built)
