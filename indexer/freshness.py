"""Is an existing INDEX_DIR still current for a checkpoint and a catalog? (stdlib only)"""

from __future__ import annotations

from pathlib import Path

from indexer.manifest import Manifest
from model.osutil import sha256_file


def index_is_current(index_dir: Path, checkpoint: Path, catalog: Path,
                     tags: bool = True) -> tuple[bool, str]:
    """Whether INDEX_DIR was built from this checkpoint and this catalog file (and why not),
    with tags unless `tags` is False (an index of older software has none).

    A folder catalog is never current: its images are re-scanned (``--update`` embeds only
    the new or changed ones).
    """
    try:
        manifest = Manifest.read(index_dir)
    except FileNotFoundError:
        return False, "no index yet"
    except (OSError, ValueError) as exc:
        return False, f"unreadable manifest ({exc})"
    catalog = Path(catalog)
    if catalog.is_dir():
        return False, "a folder catalog is always re-scanned"
    if manifest.model.sha256 != sha256_file(checkpoint):
        return False, "built with another checkpoint"
    cat = manifest.catalog
    if cat.sha256 != sha256_file(catalog) or cat.path != str(catalog.resolve()):
        return False, "built from another catalog"
    if not manifest.attributes:
        return False, "the manifest lists no attributes"
    if tags and manifest.tags_file is None:
        return False, "built without tags"
    return True, f"index {manifest.index_version} is current ({cat.items} items)"
