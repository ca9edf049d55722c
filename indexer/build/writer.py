"""Write the files of one index version: items.sqlite, *.faiss, rejected.csv, manifest.json."""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

import faiss

from indexer import SOFTWARE_VERSION
from indexer.embed.local_engine import Reject
from model.osutil import atomic_write_bytes
from indexer.manifest import MANIFEST, AttributeEntry, CatalogInfo, Manifest, ModelInfo

ITEMS_DB = "items.sqlite"
REJECTED = "rejected.csv"
ITEMS_SCHEMA = """
CREATE TABLE items (
    row INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    image TEXT NOT NULL,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL
)
"""

ItemRow = tuple[int, str, str, dict, str]  # row, id, image, metadata, sha256


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def index_filename(attribute: str) -> str:
    """A safe file name for an attribute's index."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", attribute).strip(".") or "attribute"
    return f"{safe}.faiss"


def write_items(folder: Path, rows: Iterable[ItemRow]) -> int:
    """Create items.sqlite from (row, id, image, metadata, sha256); returns the count."""
    path = folder / ITEMS_DB
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute(ITEMS_SCHEMA)
        cur = con.executemany(
            "INSERT INTO items(row, id, image, metadata, sha256) VALUES (?, ?, ?, ?, ?)",
            ((int(r), i, img, json.dumps(meta, ensure_ascii=False, sort_keys=True), sha)
             for r, i, img, meta, sha in rows))
        count = cur.rowcount
        con.commit()
    finally:
        con.close()
    _fsync_file(path)
    return count


def write_rejected(folder: Path, rejects: Iterable[Reject]) -> int:
    """rejected.csv: `path,id,reason`, one line per skipped item; returns the count."""
    path = folder / REJECTED
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "reason"])
        for r in rejects:
            w.writerow([r.path, r.id, r.reason])
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def write_index(folder: Path, attribute: str, index: faiss.Index) -> str:
    """Write one attribute's FAISS index; returns its file name."""
    name = index_filename(attribute)
    faiss.write_index(index, str(folder / name))
    _fsync_file(folder / name)
    return name


def make_manifest(*, version: str, model: ModelInfo, attributes: list[AttributeEntry],
                  catalog: CatalogInfo, rejected: int, build: dict,
                  extra: dict | None = None) -> Manifest:
    """A new version's manifest, stamped with this software and the time."""
    return Manifest(index_version=version, model=model, attributes=attributes,
                    catalog=catalog, rejected=rejected,
                    created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    software_version=SOFTWARE_VERSION, extra={"build": build, **(extra or {})})


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write manifest.json last: its presence marks a complete version."""
    atomic_write_bytes(folder / MANIFEST, manifest.to_json().encode())
