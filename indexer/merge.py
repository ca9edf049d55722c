"""Combine the outputs of `--shard I/N` runs into one index (`python -m indexer merge`)."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import time
from pathlib import Path

import faiss
import numpy as np

from indexer import faiss_index as fx
from indexer.layout import IndexLayout, new_version
from indexer.manifest import AttributeEntry, CatalogInfo, IndexInfo, Manifest
from indexer.store import Reject
from indexer.writer import (
    ITEMS_DB,
    REJECTED,
    make_manifest,
    write_index,
    write_items,
    write_manifest,
    write_rejected,
)


class MergeError(ValueError):
    """The given folders are not a complete, consistent set of shards."""


def _load_shards(dirs: list[str]) -> list[tuple[Path, Manifest]]:
    shards = []
    for d in dirs:
        root = Path(os.path.realpath(d))
        m = Manifest.read(root)
        if "shard" not in m.extra:
            raise MergeError(f"{d} is not the output of an --shard run")
        shards.append((root, m))
    shards.sort(key=lambda s: s[1].extra["shard"]["index"])
    first = shards[0][1]
    count = first.extra["shard"]["count"]
    got = [m.extra["shard"]["index"] for _, m in shards]
    if got != list(range(count)):
        raise MergeError(f"need shards 0..{count - 1} exactly once, got {got}")
    for root, m in shards:
        for what, mine, theirs in (
                ("checkpoint", m.model.sha256, first.model.sha256),
                ("catalog", m.catalog.sha256, first.catalog.sha256),
                ("shard count", m.extra["shard"]["count"], count),
                ("attributes", m.attribute_names, first.attribute_names)):
            if mine != theirs:
                raise MergeError(f"{root}: {what} differs from shard 0's")
    return shards


def merge_shards(shard_dirs: list[str], out: str, index_type: str | None = None,
                 index_params: dict | None = None, say=print) -> tuple[Path, dict]:
    """Merge shard outputs into `out` (published atomically); returns (version dir, manifest)."""
    t0 = time.perf_counter()
    shards = _load_shards(shard_dirs)
    first = shards[0][1]
    dim = first.model.dim
    items, rejects, renumber = [], [], []
    for root, _ in shards:
        con = sqlite3.connect(f"file:{root / ITEMS_DB}?mode=ro&immutable=1", uri=True)
        try:
            rows = con.execute("SELECT row, id, image, metadata, sha256 FROM items ORDER BY row")
            rows = rows.fetchall()
        finally:
            con.close()
        old = np.array([r[0] for r in rows], dtype=np.int64)
        renumber.append((old, np.arange(len(items), len(items) + len(rows), dtype=np.int64)))
        items += [(len(items) + k, i, img, meta, sha) for k, (_, i, img, meta, sha)
                  in enumerate(rows)]
        with open(root / REJECTED, newline="", encoding="utf-8") as f:
            rejects += [Reject(r["path"], r["id"], r["reason"]) for r in csv.DictReader(f)]
    ids_seen = {it[1] for it in items}
    if len(ids_seen) != len(items):
        raise MergeError("the same item id appears in several shards")
    requested = first.extra["shard"].get("requested_index", {})
    kind = index_type or requested.get("type", "flat")
    params = index_params if index_params is not None else requested.get("params", {})
    spec = fx.resolve_spec(kind, len(items), dim, params)
    layout = IndexLayout(out)
    with layout:
        version = new_version()
        staging = layout.staging(version)
        attr_docs = []
        for a in first.attributes:
            ids, vecs = [], []
            for (root, m), (old, new) in zip(shards, renumber, strict=True):
                doc = m.attribute(a.name).index
                got_ids, got_vecs = fx.extract(faiss.read_index(str(root / doc.file)))
                ids.append(new[np.searchsorted(old, got_ids)])
                vecs.append(got_vecs)
            all_ids, all_vecs = np.concatenate(ids), np.concatenate(vecs)
            order = np.argsort(all_ids, kind="stable")
            index = fx.build(spec, dim, all_ids[order], lambda pos, o=order, v=all_vecs: v[o[pos]])
            fname = write_index(staging, a.name, index)
            n = int(index.ntotal)
            attr_docs.append(AttributeEntry(a.name, a.n_values, IndexInfo(
                type=spec.type, params=dict(spec.params), file=fname, ntotal=n,
                factory=spec.factory(dim), memory_bytes=spec.memory_bytes(n, dim))))
            del index, all_vecs
        write_items(staging, ((r, i, img, json.loads(meta), sha) for r, i, img, meta, sha in items))
        write_rejected(staging, rejects)
        manifest = make_manifest(
            version=version, model=first.model, attributes=attr_docs,
            catalog=CatalogInfo(path=first.catalog.path, sha256=first.catalog.sha256,
                                items=len(items),
                                entries=sum(m.catalog.entries or 0 for _, m in shards)),
            rejected=len(rejects),
            build={"mode": "merge", "seconds": round(time.perf_counter() - t0, 3),
                   "shards": [m.index_version for _, m in shards]})
        write_manifest(staging, manifest)
        final = layout.publish(staging, version)
    say(f"merged {len(shards)} shards: {len(items)} items, {len(rejects)} rejected, "
        f"{spec.type} index -> {layout.out}")
    return final, manifest

