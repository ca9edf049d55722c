"""Stage 2, `python -m indexer build`: an embeddings store + a catalog -> INDEX_DIR.

No image is opened. A full build numbers the catalog rows that have an embedding 0..n-1 in
catalog order; a catalog row without one is listed in rejected.csv (with the embedding run's
reason when the store has one), and a store id without a catalog row is an error before any
work. `--update` starts from the published version: items whose image hash is unchanged keep
their row and their indexed vectors, changed items keep their row with the new vectors, new
items get new rows, and items no longer indexed are removed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.build import budget, tuning
from indexer.build import faiss_index as fx
from indexer.build.index_types import IndexSpec
from indexer.build.tagging import BuildTags, checkpoint_value_space
from indexer.build.writer import make_manifest, write_index, write_manifest
from indexer.catalog import Catalog, CatalogError, load_catalog
from indexer.embed.store import EmbeddingStore, EmbedStats, Reject, StoreMeta, write_rejected
from indexer.items import read_item_hashes, write_items
from indexer.layout import IndexLayout, new_version
from indexer.live.fold import Fold, prepare_fold
from indexer.manifest import (
    AttributeEntry,
    CatalogInfo,
    IndexInfo,
    Manifest,
    ModelInfo,
    TuningInfo,
)
from model.attributes import AttributeSpec
from model.prototypes import Prototypes
from model.tagging import Calibration

log = logging.getLogger(__name__)
Selection = dict[str, Any]   # how --max-memory chose a spec (the manifest's `selection`)
ValueSpace = tuple[Prototypes | None, Calibration | None]   # a checkpoint's, for the tags
MEMMAP_FROM = 256 << 20      # gather an attribute's vectors in a memory-mapped file above this


class RejectRateError(RuntimeError):
    """Too many catalog items were rejected; nothing was published."""


@dataclass
class BuildOptions:
    """The `build` flags (also used by the one-shot command)."""

    embeddings: str
    catalog: str
    out: str
    checkpoint: str | None = None          # records / checks the model of a foreign store
    update: bool = False
    index_type: str | None = None          # None: flat (full build) / the published type
    index_params: dict[str, Any] = field(default_factory=dict)
    max_memory: int | None = None          # bytes per attribute (--max-memory)
    max_reject_rate: float | None = None
    # recall@10 that approximate indexes' search knobs are tuned to (--target-recall; None:
    # 0.95, or on --update the recorded target; 0: no tuning)
    target_recall: float | None = None
    tune_sample: int = tuning.DEFAULT_SAMPLE  # queries of the tuning sample (--tune-sample)
    tags: bool = True                      # tag every item (--no-tags: none)


@dataclass
class EmbedFacts:
    """What the one-shot command's embedding step knows that a store alone does not."""

    unchanged: set[str]                     # ids skipped as identical to the published index
    stats: EmbedStats                       # the embedding run's counts and timings
    started: float | None = None            # perf_counter() when the whole job started


@dataclass
class BuildResult:
    """What a finished build published."""

    index_dir: Path
    version_dir: Path
    manifest: Manifest
    rejects: list[Reject]


@dataclass
class _Inputs:
    """What a build reads: its flags, the catalog, the store and the model of its vectors."""

    opts: BuildOptions
    catalog: Catalog
    store: EmbeddingStore
    meta: StoreMeta | None               # the store's store.json (None: another tool's store)
    model: ModelInfo
    attributes: list[AttributeSpec]
    facts: EmbedFacts | None
    started: float                       # perf_counter() when the build started
    values: ValueSpace | None = None     # the checkpoint's prototypes, when it was loaded


@dataclass
class _Previous:
    folder: Path
    manifest: Manifest
    items: dict[str, tuple[int, str]]     # id -> (row, sha256)


@dataclass
class _Plan:
    """Rows of the new version and what changes against the previous one."""

    rows: dict[int, int]                  # catalog position -> row
    shas: dict[int, str]                  # catalog position -> sha256
    add: list[int]                        # positions whose vectors come from the store
    remove: np.ndarray                    # previous rows to delete (incl. changed ones)
    rejects: list[Reject]


def _store_model(store: EmbeddingStore, meta: StoreMeta | None, checkpoint: str | None
                 ) -> tuple[ModelInfo, list[AttributeSpec], ValueSpace | None]:
    """The model of the store's vectors and its attributes (n_values 0: unknown), and the
    value space of `checkpoint` when given (it is loaded to check it)."""
    model = meta.model if meta else None
    attrs = (meta.attributes if meta else []) or [AttributeSpec(a) for a in store.attributes]
    if store.part_count and [a.name for a in attrs] != store.attributes:
        raise ValueError(f"{store.root}: store.json attributes differ from the Parquet columns")
    if not attrs:
        raise FileNotFoundError(f"{store.root} holds no embeddings (no Parquet files)")
    values = None
    if checkpoint is not None:
        model, attrs, values = _checked_model(store, model, [a.name for a in attrs],
                                              checkpoint)
    if model is None:
        model = ModelInfo(dim=int(store.dim or 0))
    return model, attrs, values


def _checked_model(store: EmbeddingStore, model: ModelInfo | None, names: list[str],
                   checkpoint: str) -> tuple[ModelInfo, list[AttributeSpec], ValueSpace]:
    """`--checkpoint`'s model and attributes, checked against the store's vectors."""
    from indexer.embed.stage import model_info
    from model import load_model

    emb = load_model(checkpoint, device="cpu")
    # the store's vectors were made in the store's precision, not in this copy's
    info = replace(model_info(emb, checkpoint), precision=model.precision if model else None,
                   precision_choice=model.precision_choice if model else None)
    if model is not None and model.sha256 and model.sha256 != info.sha256:
        raise ValueError(f"--checkpoint {checkpoint} is not the model that wrote "
                         f"{store.root} (sha256 {model.sha256[:12]})")
    if store.dim is not None and info.dim != store.dim:
        raise ValueError(f"--checkpoint dimension {info.dim} != store dimension {store.dim}")
    missing = [a for a in names if a not in emb.attribute_names]
    if missing:
        raise ValueError(f"--checkpoint lacks the store's attributes {missing}")
    specs = {a.name: a for a in emb.attributes}
    return info, [specs[a] for a in names], (emb.prototypes, emb.calibration)


def _load_previous(layout: IndexLayout, model: ModelInfo, attrs: list[str]) -> _Previous | None:
    folder = layout.current()
    if folder is None:
        log.info("update: no published index yet, building from scratch")
        return None
    manifest = Manifest.read(folder)
    if manifest.model.sha256 != model.sha256 or manifest.model.dim != model.dim:
        log.info("update: the model differs from the published index's; rebuilding all")
        return None
    if manifest.attribute_names != attrs:
        log.info("update: the attributes differ from the published index's; rebuilding all")
        return None
    return _Previous(folder, manifest, read_item_hashes(folder))


def check_store_ids(store: EmbeddingStore, catalog: Catalog) -> None:
    """Every stored id must be a catalog row (CatalogError before any work)."""
    ids = {it.id for it in catalog.items}
    extra = [i for i in store.where if i not in ids]
    if extra:
        shown = ", ".join(repr(i) for i in sorted(extra)[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise CatalogError(f"{len(extra)} id(s) in the embeddings store {store.root} have no "
                           f"catalog row: {shown}{more}")


def _plan(catalog: Catalog, store: EmbeddingStore, prev: _Previous | None,
          facts: EmbedFacts | None) -> _Plan:
    """Classify every catalog row and assign rows (catalog order for a full build)."""
    unchanged_ids = facts.unchanged if facts else set()
    known_rejects = store.read_rejects()
    rows: dict[int, int] = {}
    shas: dict[int, str] = {}
    add: list[int] = []
    rejects: list[Reject] = []
    keep: set[str] = set()
    remove: list[int] = []
    next_row = max((r for r, _ in prev.items.values()), default=-1) + 1 if prev else 0
    for p, item in enumerate(catalog.items):
        old = prev.items.get(item.id) if prev else None
        sha = store.sha(item.id)
        if sha is None and old is not None and item.id in unchanged_ids:
            sha = old[1]
        if sha is None:
            r = known_rejects.get(item.id)
            rejects.append(Reject(item.image, item.id, r.reason if r else "no_embedding"))
            continue
        shas[p] = sha
        if old is None:
            rows[p] = next_row
            next_row += 1
            add.append(p)
            continue
        rows[p] = old[0]
        keep.add(item.id)
        if old[1] != sha:                   # changed content: same row, new vectors
            remove.append(old[0])
            add.append(p)
    if prev:
        remove += [r for i, (r, _) in prev.items.items() if i not in keep]
    return _Plan(rows, shas, add, np.array(sorted(remove), dtype=np.int64), rejects)


def _requested_spec(opts: BuildOptions, n: int, dim: int) -> tuple[IndexSpec, Selection | None]:
    """The spec the flags ask for on `n` vectors, and the --max-memory record if any."""
    if opts.max_memory is not None:
        choice = budget.select(n, dim, opts.max_memory, opts.index_params)
        return choice.spec, choice.selection(opts.max_memory)
    return fx.resolve_spec(opts.index_type or "flat", n, dim, opts.index_params), None


def _updated_spec(opts: BuildOptions, old: IndexSpec, old_selection: Selection | None, n: int,
                  dim: int) -> tuple[IndexSpec, Selection | None]:
    """An update's spec: the published one, unless the flags ask for another."""
    if opts.max_memory is not None:
        if old.memory_bytes(n, dim) <= opts.max_memory and not opts.index_params:
            return old, old_selection                      # still fits: keep it
        return _requested_spec(opts, n, dim)
    kind = fx.auto_type(n) if opts.index_type == "auto" else (opts.index_type or old.type)
    if kind != old.type:
        return fx.resolve_spec(kind, n, dim, opts.index_params), None
    params = {**old.params, **{k: v for k, v in opts.index_params.items() if k in old.params}}
    return IndexSpec(old.type, params), old_selection     # same type: nothing recomputed


def _index_specs(opts: BuildOptions, prev: _Previous | None, n: int, dim: int,
                 attrs: list[str]) -> dict[str, tuple[IndexSpec, Selection | None]]:
    """Spec per attribute: an update keeps the published spec unless the flags ask for
    another one (a type that keeps no vectors can only change search knobs)."""
    if prev is None:
        return dict.fromkeys(attrs, _requested_spec(opts, n, dim))
    out = {}
    for entry in prev.manifest.attributes:
        old = IndexSpec(entry.index.type, dict(entry.index.params))
        new, selection = _updated_spec(opts, old, entry.index.selection, n, dim)
        if not old.same_structure(new) and not old.kind.keeps_vectors:
            what = "type" if new.type != old.type else "build parameters"
            raise ValueError(f"--update cannot change the index {what} of {old.type} (it "
                             "keeps no vectors to rebuild from); run a full build instead")
        out[entry.name] = (new, selection)
    return out


def run_build(opts: BuildOptions, *, catalog: Catalog | None = None,
              facts: EmbedFacts | None = None, layout: IndexLayout | None = None,
              live: Fold | None = None, values: ValueSpace | None = None) -> BuildResult:
    """Build INDEX_DIR from a store; raises CatalogError before any work on bad inputs.

    `layout`: the INDEX_DIR layout when the caller already holds its writer lock.
    `live`: the live changes this build folds, `catalog` being the layered catalog
    (indexer/live/fold.py); without it, an INDEX_DIR with live changes is refused (their
    images are not in the store), and the new version carries the journal position over.
    `values`: the model checkpoint's prototypes and calibration, when the caller has read
    them (else read from the checkpoint, for the tags).
    """
    t0 = time.perf_counter()
    catalog = catalog or load_catalog(opts.catalog)
    if len(catalog) == 0:
        raise ValueError(f"catalog {opts.catalog} has no items")
    if not Path(opts.embeddings).is_dir():
        raise FileNotFoundError(f"no embeddings store at {opts.embeddings}")
    store = EmbeddingStore(opts.embeddings)
    check_store_ids(store, catalog)
    meta = StoreMeta.read(store.root)
    model, attrs, checked = _store_model(store, meta, opts.checkpoint)
    inputs = _Inputs(opts, catalog, store, meta, model, attrs, facts, t0, values or checked)
    if layout is not None:
        return _build_locked(inputs, layout, live)
    with IndexLayout(opts.out) as held:
        return _build_locked(inputs, held, live)


def _no_live_changes(layout: IndexLayout, catalog: Catalog) -> Fold:
    """The (empty) fold of a build from a store alone; ValueError when INDEX_DIR has live
    changes, which only the one-shot command can fold (it embeds their stored images)."""
    live = prepare_fold(layout, catalog)
    if live.has_changes:
        raise ValueError(f"{layout.out} has live catalog changes ({len(live.layer)} in the "
                         f"published layer, {live.changes} in the journal {live.journal.db}); "
                         "`build` cannot embed their images: run the one-shot `python -m "
                         "indexer --catalog ... --checkpoint ... --update`, which folds them")
    return live


def _check_rejects(opts: BuildOptions, catalog: Catalog, plan: _Plan) -> None:
    """RejectRateError when nothing is left, or more than --max-reject-rate was rejected."""
    n_rej = len(plan.rejects)
    if not plan.rows:
        raise RejectRateError(f"all {n_rej} catalog items were rejected; nothing published")
    rate = n_rej / len(catalog)
    if opts.max_reject_rate is not None and rate > opts.max_reject_rate:
        raise RejectRateError(
            f"{n_rej} of {len(catalog)} items rejected ({rate:.1%}) exceeds "
            f"--max-reject-rate {opts.max_reject_rate:.1%}; the previous index is kept")


def _build_locked(inp: _Inputs, layout: IndexLayout, live: Fold | None) -> BuildResult:
    live = live if live is not None else _no_live_changes(layout, inp.catalog)
    names = [a.name for a in inp.attributes]
    prev = _load_previous(layout, inp.model, names) if inp.opts.update else None
    plan = _plan(inp.catalog, inp.store, prev, inp.facts)
    _check_rejects(inp.opts, inp.catalog, plan)
    dim = inp.model.dim
    specs = _index_specs(inp.opts, prev, len(plan.rows), dim, names)
    tags = _build_tags(inp, plan)
    version = new_version()
    staging = layout.staging(version)
    try:
        entries = [_attribute_entry(staging, a, specs[a.name], inp, plan, prev, tags)
                   for a in inp.attributes]
        manifest = _finish(inp, staging, version, entries, plan, prev, live, tags)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = layout.publish(staging, version)
    live.commit({r.id for r in plan.rejects})
    return BuildResult(layout.out, final, manifest, plan.rejects)


def _build_tags(inp: _Inputs, plan: _Plan) -> BuildTags | None:
    """The tags of this build (None with --no-tags), from the checkpoint's prototypes and
    calibration and the catalog's labels."""
    if not inp.opts.tags:
        return None
    checkpoint = inp.opts.checkpoint or inp.model.checkpoint
    base, calibration = inp.values if inp.values is not None else \
        checkpoint_value_space(checkpoint, inp.model.sha256)
    items = inp.catalog.items
    return BuildTags(base, calibration, None if base is None else str(checkpoint),
                     {row: items[p].metadata for p, row in plan.rows.items()})


def _tag_vectors(index: faiss.Index, spec: IndexSpec, plan: _Plan, add_rows: np.ndarray,
                 add_vecs: np.ndarray, full: bool) -> tuning.Vectors:
    """Every item's vectors to tag from: a full build's own, an update's from the index
    (ivfpq keeps codes only: their reconstruction)."""
    if full:
        return tuning.Vectors(add_rows, add_vecs.__getitem__)
    stored = tuning.stored_vectors(index)
    if stored is not None:
        return stored
    reader = faiss.clone_index(index)
    fx.prepare_reader(reader, spec)
    rows = np.array(sorted(plan.rows.values()), dtype=np.int64)
    return tuning.Vectors(rows, lambda pos: reader.reconstruct_batch(rows[pos]))


def _gather(store: EmbeddingStore, attribute: str, ids: list[str], dim: int,
            staging: Path) -> np.ndarray:
    """An attribute's vectors for `ids`, in memory or (large) in a memory-mapped scratch file."""
    if not ids:
        return np.zeros((0, dim), np.float32)
    if len(ids) * dim * 4 < MEMMAP_FROM:
        return store.vectors(attribute, ids)
    scratch = staging / f".scratch-{attribute}.npy"
    out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32,
                                    shape=(len(ids), dim))
    scratch.unlink()           # the mapping stays valid; nothing is left behind on a crash
    return store.vectors(attribute, ids, out=out)


def _attribute_entry(staging: Path, attribute: AttributeSpec,
                     chosen: tuple[IndexSpec, Selection | None], inp: _Inputs, plan: _Plan,
                     prev: _Previous | None, tags: BuildTags | None) -> AttributeEntry:
    """Build (full) or update (incremental) one attribute's index and write it."""
    spec, selection = chosen
    name, dim = attribute.name, inp.model.dim
    add_rows = np.array([plan.rows[p] for p in plan.add], dtype=np.int64)
    add_vecs = _gather(inp.store, name, [inp.catalog.items[p].id for p in plan.add], dim,
                       staging)
    old_tuning: TuningInfo | None = None
    changed: int | None = None                 # None: a new index (full build or rebuild)
    if prev is None:
        index = fx.build(spec, dim, add_rows, add_vecs.__getitem__)
    else:
        old_info = prev.manifest.attribute(name).index
        index, changed = _updated_index(prev.folder, old_info, spec, plan, add_rows, add_vecs)
        old_tuning = old_info.tuning
    vectors = tuning.stored_vectors(index)
    if vectors is None and prev is None:       # ivfpq keeps codes only: the build's vectors
        vectors = tuning.Vectors(add_rows, add_vecs.__getitem__)
    request = tuning.TuneRequest(inp.opts.target_recall, frozenset(inp.opts.index_params),
                                 inp.opts.tune_sample)
    spec, tuned = tuning.settle(index, spec, request, vectors, old_tuning, changed, name)
    if tags is not None:
        tags.add(name, _tag_vectors(index, spec, plan, add_rows, add_vecs, prev is None))
    fname = write_index(staging, name, index)
    n = int(index.ntotal)
    info = IndexInfo(type=spec.type, params=dict(spec.params), file=fname, ntotal=n,
                     factory=spec.factory(dim), memory_bytes=spec.memory_bytes(n, dim),
                     selection=selection, tuning=tuned)
    # AttributeSpec's 0 means "unknown", which the manifest writes as null
    return AttributeEntry(name, attribute.n_values or None, info)


def _updated_index(folder: Path, old_info: IndexInfo, spec: IndexSpec, plan: _Plan,
                   add_rows: np.ndarray, add_vecs: np.ndarray) -> tuple[faiss.Index, int | None]:
    """The published index with the plan's changes: updated in place (and the rows added
    plus removed), or rebuilt from its kept vectors for a new structure (None)."""
    old = faiss.read_index(str(folder / old_info.file))
    old_spec = IndexSpec(old_info.type, dict(old_info.params))
    if old_spec.same_structure(spec):           # search knobs may differ
        index = fx.update(old, spec, plan.remove, add_rows, add_vecs)
        fx.tune(index, spec)
        return index, len(plan.remove) + len(add_rows)
    ids, vecs = fx.extract(old)                 # a new type: rebuild from the kept vectors
    keep = ~np.isin(ids, plan.remove)
    all_ids = np.concatenate([ids[keep], add_rows])
    all_vecs = np.concatenate([vecs[keep], add_vecs])
    order = np.argsort(all_ids, kind="stable")
    return fx.build(spec, old.d, all_ids[order], lambda pos: all_vecs[order[pos]]), None


def _build_section(inp: _Inputs, plan: _Plan, prev: _Previous | None) -> dict[str, Any]:
    """The manifest's `build` section: timings and counts of this build and its embedding."""
    facts = inp.facts
    stats = facts.stats if facts else (inp.meta.last_run if inp.meta else None) or EmbedStats()
    started = facts.started if facts and facts.started is not None else inp.started
    now = time.perf_counter()
    return {
        "mode": "update" if prev else "full",
        "seconds": round(now - started, 3),
        "index_seconds": round(now - inp.started, 3),
        "embed_seconds": stats.seconds, "images_per_s": stats.images_per_s,
        "computed": stats.computed, "cached": stats.cached, "unchanged": stats.unchanged,
        "rejected_by_reason": dict(Counter(r.reason for r in plan.rejects)),
        "device": stats.device, "faiss_gpus": faiss.get_num_gpus(),
        "workers": stats.workers, "batch_size": stats.batch_size,
    }


def _update_section(plan: _Plan, prev: _Previous) -> dict[str, Any]:
    """The manifest's `update` section: what changed against the published version."""
    add_rows = [plan.rows[p] for p in plan.add]
    changed = len(np.intersect1d(plan.remove, add_rows))
    return {"base_version": prev.manifest.index_version,
            "added": len(plan.add) - changed, "changed": changed,
            "removed": int(len(plan.remove) - changed),
            "unchanged": len(plan.rows) - len(plan.add)}


def _finish(inp: _Inputs, staging: Path, version: str, entries: list[AttributeEntry],
            plan: _Plan, prev: _Previous | None, live: Fold, tags: BuildTags | None
            ) -> Manifest:
    """items.sqlite (with the tags), prototypes.json, rejected.csv, live.jsonl and the
    manifest of the new version."""
    items = inp.catalog.items
    write_items(staging, ((plan.rows[p], items[p].id, items[p].image, items[p].metadata,
                           plan.shas[p]) for p in sorted(plan.rows, key=plan.rows.__getitem__)))
    write_rejected(staging, plan.rejects)
    live.write(staging)
    extra: dict[str, Any] = {
        "embeddings": {"path": str(Path(inp.opts.embeddings).resolve()),
                       "parts": inp.store.part_count, "items": len(inp.store)},
        "live": live.manifest_section()}
    if prev is not None:
        extra["update"] = _update_section(plan, prev)
    if tags is not None:
        extra["tags"] = tags.write(staging)
    manifest = make_manifest(
        version=version, model=inp.model, attributes=entries,
        catalog=CatalogInfo(path=inp.catalog.path, sha256=inp.catalog.sha256,
                            items=len(plan.rows), entries=len(inp.catalog)),
        rejected=len(plan.rejects), build=_build_section(inp, plan, prev), extra=extra)
    write_manifest(staging, manifest)
    return manifest
