"""Is an existing INDEX_DIR still current for a checkpoint and a catalog? (stdlib only)"""

from __future__ import annotations

import hashlib
from pathlib import Path

from indexer.manifest import Manifest


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def index_is_current(index_dir: Path, checkpoint: Path, catalog: Path) -> tuple[bool, str]:
    """Whether INDEX_DIR was built from this checkpoint and this catalog file (and why not)."""
    try:
        manifest = Manifest.read(index_dir)
    except FileNotFoundError:
        return False, "no index yet"
    except (OSError, ValueError) as exc:
        return False, f"unreadable manifest ({exc})"
    if manifest.model.sha256 != sha256_file(checkpoint):
        return False, "built with another checkpoint"
    catalog = Path(catalog)
    cat = manifest.catalog
    if cat.sha256 != sha256_file(catalog) or cat.path != str(catalog.resolve()):
        return False, "built from another catalog"
    if not manifest.attributes:
        return False, "the manifest lists no attributes"
    return True, f"index {manifest.index_version} is current ({cat.items} items)"
