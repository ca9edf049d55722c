"""Is an existing INDEX_DIR still current for a checkpoint and a catalog? (stdlib only)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def index_is_current(index_dir: Path, checkpoint: Path, catalog: Path) -> tuple[bool, str]:
    """Whether INDEX_DIR was built from this checkpoint and this catalog file (and why not)."""
    try:
        manifest = json.loads((Path(index_dir) / "manifest.json").read_text())
    except FileNotFoundError:
        return False, "no index yet"
    except (OSError, ValueError) as exc:
        return False, f"unreadable manifest ({exc})"
    model = manifest.get("model") or {}
    cat = manifest.get("catalog") or {}
    if model.get("sha256") != sha256_file(checkpoint):
        return False, "built with another checkpoint"
    catalog = Path(catalog)
    if cat.get("sha256") != sha256_file(catalog) or cat.get("path") != str(catalog.resolve()):
        return False, "built from another catalog"
    if not manifest.get("attributes"):
        return False, "the manifest lists no attributes"
    return True, f"index {manifest.get('index_version')} is current ({cat.get('items')} items)"
