"""Write the files of one index version: *.faiss, manifest.json (items.sqlite:
`indexer.items.write_items`; rejected.csv: `indexer.embed.store.write_rejected`)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import faiss

from indexer import SOFTWARE_VERSION
from indexer.manifest import MANIFEST, AttributeEntry, CatalogInfo, Manifest, ModelInfo
from model.osutil import atomic_write_bytes, replace_atomically


def index_filename(attribute: str) -> str:
    """A safe file name for an attribute's index."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", attribute).strip(".") or "attribute"
    return f"{safe}.faiss"


def write_index(folder: Path, attribute: str, index: faiss.Index) -> str:
    """Write one attribute's FAISS index; returns its file name."""
    name = index_filename(attribute)
    replace_atomically(folder / name, lambda tmp: faiss.write_index(index, str(tmp)))
    return name


def make_manifest(*, version: str, model: ModelInfo, attributes: list[AttributeEntry],
                  catalog: CatalogInfo, rejected: int, build: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Manifest:
    """A new version's manifest, stamped with this software and the time."""
    return Manifest(index_version=version, model=model, attributes=attributes,
                    catalog=catalog, rejected=rejected,
                    created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    software_version=SOFTWARE_VERSION, extra={"build": build, **(extra or {})})


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write manifest.json last: its presence marks a complete version."""
    atomic_write_bytes(folder / MANIFEST, manifest.to_json().encode())
