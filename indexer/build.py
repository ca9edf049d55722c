"""The batch job: catalog -> embeddings (resumable) -> one FAISS index per attribute.

A full build numbers the accepted items 0..n-1 in catalog order. `--update` starts from the
published version: unchanged items keep their row and their stored vectors, changed items
(new content hash) keep their row and are re-embedded, new items get new rows, deleted or
now-unreadable items are removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from indexer import FORMAT_VERSION
from indexer import faiss_index as fx
from indexer.catalog import Catalog, load_catalog
from indexer.embedding_job import (
    EmbedLimits,
    EmbedOutcome,
    default_workers,
    embed_catalog,
    set_threads,
)
from indexer.layout import IndexLayout, new_version
from indexer.reader import read_item_hashes, read_manifest
from indexer.shards import ShardStore
from indexer.writer import make_manifest, write_index, write_items, write_manifest, write_rejected
from model import load_model


class RejectRateError(RuntimeError):
    """Too many catalog items were rejected; nothing was published."""


@dataclass
class BuildOptions:
    """Everything the job needs (the CLI flags)."""

    catalog: str
    checkpoint: str
    out: str
    update: bool = False
    shard: tuple[int, int] | None = None
    index_type: str | None = None          # None: flat (full build) / previous type (update)
    index_params: dict = field(default_factory=dict)
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    device: str | None = None
    precision: str = "fp32"
    limits: EmbedLimits = field(default_factory=EmbedLimits)
    max_reject_rate: float | None = None
    shard_size: int = 1024
    keep_work: bool = False
    progress: bool = True


@dataclass
class BuildResult:
    """What a finished job published."""

    index_dir: Path
    version_dir: Path
    manifest: dict
    outcome: EmbedOutcome


@dataclass
class _Previous:
    folder: Path
    manifest: dict
    items: dict[str, tuple[int, str]]     # id -> (row, sha256)


def _job_key(model_sha: str, precision: str, attributes: list[str], device: str) -> str:
    """Work-folder name of an embedding job: a resumed job never mixes CPU and GPU vectors."""
    doc = json.dumps([FORMAT_VERSION, model_sha, precision, attributes, device])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _load_previous(layout: IndexLayout, emb, say) -> _Previous | None:
    folder = layout.current()
    if folder is None:
        say("update: no published index yet, building from scratch")
        return None
    manifest = read_manifest(folder)
    attrs = [a["name"] for a in manifest["attributes"]]
    if manifest["model"].get("sha256") != emb.checkpoint_sha256:
        say("update: the checkpoint differs from the published index's; re-embedding all")
        return None
    if attrs != emb.attribute_names:
        say("update: the attributes differ from the published index's; re-embedding all")
        return None
    return _Previous(folder, manifest, read_item_hashes(folder))


def _model_info(emb, checkpoint: str) -> dict:
    return {"checkpoint": str(Path(checkpoint).resolve()), "sha256": emb.checkpoint_sha256,
            "config": emb.config.to_dict(), "dim": int(emb.dim), "precision": emb.precision}


def _plan_rows(catalog: Catalog, outcome: EmbedOutcome, prev: _Previous | None):
    """Assign rows. Returns (rows per accepted item, rows to remove, positions to add)."""
    accepted = [i for i, s in enumerate(outcome.status) if s != "rejected"]
    if prev is None:
        return {p: r for r, p in enumerate(accepted)}, np.zeros(0, np.int64), accepted
    next_row = max((r for r, _ in prev.items.values()), default=-1) + 1
    rows, add, keep_ids = {}, [], set()
    remove: list[int] = []
    for p in accepted:
        item = catalog.items[p]
        old = prev.items.get(item.id)
        if old is not None and outcome.status[p] == "unchanged":
            rows[p] = old[0]
            keep_ids.add(item.id)
            continue
        if old is not None:               # changed content: same row, new vectors
            rows[p] = old[0]
            remove.append(old[0])
            keep_ids.add(item.id)
        else:
            rows[p] = next_row
            next_row += 1
        add.append(p)
    remove += [r for i, (r, _) in prev.items.items() if i not in keep_ids]
    return rows, np.array(sorted(remove), dtype=np.int64), add


def _index_specs(opts: BuildOptions, prev: _Previous | None, n: int, dim: int,
                 attrs: list[str], previous_type: str | None) -> dict[str, fx.IndexSpec]:
    """Index spec per attribute: shards flat; updates keep the published one; else the flag."""
    if opts.shard is not None:   # shard outputs keep exact vectors so they can be merged
        return {a: fx.IndexSpec("flat", {}) for a in attrs}
    if prev is not None and opts.index_type is None:
        return {a["name"]: fx.IndexSpec(a["index"]["type"], dict(a["index"]["params"]))
                for a in prev.manifest["attributes"]}
    kind = opts.index_type or previous_type or "flat"
    spec = fx.resolve_spec(kind, n, dim, opts.index_params)
    return dict.fromkeys(attrs, spec)


def run_build(opts: BuildOptions, say=None) -> BuildResult:
    """Run the whole job; raises CatalogError before any work for a bad catalog."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    catalog = load_catalog(opts.catalog)
    entries_total = len(catalog)
    if opts.shard is not None:
        catalog = catalog.shard(*opts.shard)
    if len(catalog) == 0:
        raise ValueError(f"catalog {opts.catalog} has no items")
    set_threads(opts.threads)
    layout = IndexLayout(opts.out)
    with layout:
        emb = load_model(opts.checkpoint, device=opts.device, precision=opts.precision)
        attrs = emb.attribute_names
        prev = _load_previous(layout, emb, say) if opts.update else None
        _check_type_change(opts, prev)
        key = _job_key(emb.checkpoint_sha256, emb.precision, attrs, emb.device.type)
        if layout.work.exists():
            for other in layout.work.iterdir():
                if other.name != key:
                    shutil.rmtree(other, ignore_errors=True)
        store = ShardStore(layout.work / key, job={
            "checkpoint": str(Path(opts.checkpoint).resolve()),
            "sha256": emb.checkpoint_sha256, "precision": emb.precision,
            "device": emb.device.type, "attributes": attrs})
        if len(store):
            say(f"resuming: {len(store)} embedded images found in {store.root}")
        previous = {i: sha for i, (_, sha) in prev.items.items()} if prev else None
        outcome = embed_catalog(emb, catalog.items, store, previous=previous,
                                batch_size=opts.batch_size, workers=opts.workers,
                                shard_size=opts.shard_size, limits=opts.limits,
                                progress=opts.progress)
        n_rej = len(outcome.rejects)
        rate = n_rej / len(catalog)
        if n_rej == len(catalog):
            raise RejectRateError(f"all {n_rej} catalog items were rejected; nothing published")
        if opts.max_reject_rate is not None and rate > opts.max_reject_rate:
            raise RejectRateError(
                f"{n_rej} of {len(catalog)} items rejected ({rate:.1%}) exceeds "
                f"--max-reject-rate {opts.max_reject_rate:.1%}; the previous index is kept")
        rows, remove, add = _plan_rows(catalog, outcome, prev)
        n_items = len(rows)
        published = layout.current() if opts.update else None
        previous_type = (read_manifest(published)["attributes"][0]["index"]["type"]
                         if published is not None else None)
        specs = _index_specs(opts, prev, n_items, emb.dim, attrs, previous_type)
        version = new_version()
        staging = layout.staging(version)
        try:
            manifest = _write_version(opts, catalog, emb, prev, outcome, store, staging, version,
                                      rows, remove, add, specs, t0, entries_total)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = layout.publish(staging, version)
        if not opts.keep_work:
            store.remove()
            if layout.work.exists() and not any(layout.work.iterdir()):
                layout.work.rmdir()
    return BuildResult(layout.out, final, manifest, outcome)


def _check_type_change(opts: BuildOptions, prev: _Previous | None) -> None:
    """Fail before any work when --update asks for a type the old index cannot become."""
    if prev is None or opts.index_type is None or opts.shard is not None:
        return
    old = prev.manifest["attributes"][0]["index"]["type"]
    if old not in fx.EXACT_STORAGE and opts.index_type != old:
        raise ValueError(f"--update cannot change the index type from {old} (it keeps no "
                         "exact vectors); run a full build instead")


def _write_version(opts: BuildOptions, catalog: Catalog, emb, prev: _Previous | None,
                   outcome: EmbedOutcome, store: ShardStore, staging: Path, version: str,
                   rows: dict[int, int], remove: np.ndarray, add: list[int],
                   specs: dict[str, fx.IndexSpec], t0: float, entries_total: int) -> dict:
    """Write every file of the new version into `staging`; returns its manifest."""
    n_items, n_rej = len(rows), len(outcome.rejects)
    t_index = time.perf_counter()
    attr_docs = []
    for a_idx, spec_attr in enumerate(emb.attributes):
        name = spec_attr.name
        spec = specs[name]
        index = _attribute_index(a_idx, name, spec, prev, rows, remove, add, catalog,
                                 outcome, store, emb.dim)
        fname = write_index(staging, name, index)
        attr_docs.append({"name": name, "n_values": int(spec_attr.n_values),
                          "index": {**spec.to_dict(), "factory": spec.factory(emb.dim),
                                    "file": fname, "ntotal": int(index.ntotal)}})
        del index
    write_items(staging, ((rows[p], catalog.items[p].id, catalog.items[p].image,
                           catalog.items[p].metadata, outcome.shas[p])
                          for p in sorted(rows, key=rows.get)))
    write_rejected(staging, outcome.rejects)
    computed = outcome.count("computed")
    build = {
        "mode": "update" if prev else "full",
        "seconds": round(time.perf_counter() - t0, 3),
        "embed_seconds": round(outcome.seconds, 3),
        "index_seconds": round(time.perf_counter() - t_index, 3),
        "images_per_s": round(len(catalog) / outcome.seconds, 2) if outcome.seconds else None,
        "computed": computed, "cached": outcome.count("cached"),
        "unchanged": outcome.count("unchanged"),
        "rejected_by_reason": dict(Counter(r.reason for r in outcome.rejects)),
        "device": str(emb.device), "faiss_gpus": faiss.get_num_gpus(),
        "workers": default_workers() if opts.workers is None else opts.workers,
        "batch_size": opts.batch_size,
    }
    extra: dict = {}
    if prev is not None:
        changed = len(np.intersect1d(remove, [rows[p] for p in add]))
        extra["update"] = {"base_version": prev.manifest["index_version"],
                           "added": len(add) - changed, "changed": changed,
                           "removed": int(len(remove) - changed),
                           "unchanged": outcome.count("unchanged")}
    if opts.shard is not None:
        extra["shard"] = {"index": opts.shard[0], "count": opts.shard[1],
                          "catalog_entries": entries_total,
                          "requested_index": {"type": opts.index_type or "flat",
                                              "params": dict(opts.index_params)}}
    manifest = make_manifest(
        version=version, model=_model_info(emb, opts.checkpoint), attributes=attr_docs,
        catalog={"path": catalog.path, "sha256": catalog.sha256, "items": n_items,
                 "entries": len(catalog)},
        rejected=n_rej, build=build, extra=extra)
    write_manifest(staging, manifest)
    return manifest


def _attribute_index(a_idx: int, name: str, spec: fx.IndexSpec, prev: _Previous | None,
                     rows: dict[int, int], remove: np.ndarray, add: list[int],
                     catalog: Catalog, outcome: EmbedOutcome, store: ShardStore,
                     dim: int) -> faiss.Index:
    """Build (full) or update (incremental) one attribute's index."""
    add_rows = np.array([rows[p] for p in add], dtype=np.int64)
    add_shas = [outcome.shas[p] for p in add]

    def get(pos: np.ndarray) -> np.ndarray:
        return store.gather([add_shas[int(i)] for i in pos], a_idx)

    if prev is None:
        return fx.build(spec, dim, add_rows, get)
    old_doc = next(a for a in prev.manifest["attributes"] if a["name"] == name)["index"]
    old = faiss.read_index(str(prev.folder / old_doc["file"]))
    old_spec = fx.IndexSpec(old_doc["type"], dict(old_doc["params"]))
    add_vecs = get(np.arange(len(add))) if add else np.zeros((0, dim), np.float32)
    if old_spec.to_dict() == spec.to_dict():
        return fx.update(old, spec, remove, add_rows, add_vecs)
    if old_spec.type not in fx.EXACT_STORAGE:
        raise ValueError(f"--update cannot change the index type from {old_spec.type} "
                         f"(it keeps no exact vectors); run a full build instead")
    ids, vecs = fx.extract(old)
    keep = ~np.isin(ids, remove)
    all_ids = np.concatenate([ids[keep], add_rows])
    all_vecs = np.concatenate([vecs[keep], add_vecs])
    order = np.argsort(all_ids, kind="stable")
    return fx.build(spec, dim, all_ids[order], lambda pos: all_vecs[order[pos]])
