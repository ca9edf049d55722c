"""Read a catalog (CSV, JSON Lines or a folder of images) into a list of items.

The one reader of the catalog format (SPEC section 7): the indexer's batch job
(``indexer.catalog`` re-exports these names) and the dataset builder (``python -m
model.dataset``) both load catalogs through :func:`load_catalog`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
#: the longest id, in characters (the service's id fields take as much)
MAX_ID_LENGTH = 512
#: what follows an id in its image URL, GET /v1/items/{id}/image
IMAGE_URL_SUFFIX = "/image"
#: control characters (Unicode category Cc) and lone surrogates (Cs, not encodable as UTF-8)
_UNSERVABLE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class CatalogError(ValueError):
    """The catalog itself is unusable (bad format, missing column, duplicate ids)."""


@dataclass(frozen=True)
class CatalogItem:
    """One catalog entry: a unique id, an absolute image path and free-form metadata."""

    id: str
    image: str
    metadata: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Catalog:
    """The items of a catalog, in file order, and a fingerprint of the catalog itself."""

    path: str
    items: list[CatalogItem]
    sha256: str

    def __len__(self) -> int:
        return len(self.items)


def id_problem(item_id: str) -> str | None:
    """Why ``item_id`` cannot be a catalog id, or None when it can.

    The rule the indexer's catalogs and the service's PUT share: every id accepted is
    addressable at ``/v1/items/{id}`` and ``/v1/items/{id}/image`` with the id percent-encoded
    as one path segment (any character, ``/`` included, round-trips). Refused: an empty or
    blank id, one over MAX_ID_LENGTH characters, control characters or lone surrogates, the
    ids ``.`` and ``..`` (dot segments, which clients remove from URLs before sending them),
    and an id ending in ``/image`` (servers decode ``%2F`` before routing, so its item URL
    would be the image URL of another id).
    """
    if not item_id.strip():
        return "empty"
    if len(item_id) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if (bad := _UNSERVABLE_CHARS.search(item_id)) is not None:
        kind = "a lone surrogate" if bad.group() >= "\ud800" else "a control character"
        return f"{kind} ({bad.group()!r})"
    if item_id in (".", ".."):
        return "'.' and '..' are dot segments that clients remove from URLs"
    if item_id.endswith(IMAGE_URL_SUFFIX):
        return f"ends in {IMAGE_URL_SUFFIX!r}, the suffix of an image URL"
    return None


def _check_id(item_id: str, where: str) -> None:
    if (problem := id_problem(item_id)) is not None:
        raise CatalogError(f"{where}: id {item_id!r} cannot be served: {problem}")


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Load a catalog file or folder; raises CatalogError on duplicate ids, ids that cannot
    be served (``id_problem``) or bad format."""
    p = Path(path)
    if p.is_dir():
        items, digest = _read_folder(p)
    elif not p.exists():
        raise CatalogError(f"catalog not found: {p}")
    else:
        raw = p.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{p}: not UTF-8 text (byte {exc.start}); save the catalog as "
                               "UTF-8 CSV or JSON Lines") from None
        if p.suffix.lower() in JSONL_SUFFIXES:
            items = _read_jsonl(text, p.parent)
        else:
            items = _read_csv(text, p.parent)
    _check_duplicates(items)
    return Catalog(str(p.resolve()), items, digest)


def _resolve_image(image: str, base: Path) -> str:
    img = Path(os.path.expanduser(image))
    return os.path.abspath(img if img.is_absolute() else base / img)


def _make_item(record: dict[str, Any], base: Path, where: str) -> CatalogItem:
    item_id = record.get("id")
    image = record.get("image")
    if item_id is None or str(item_id).strip() == "":
        raise CatalogError(f"{where}: empty or missing 'id'")
    if image is None or str(image).strip() == "":
        raise CatalogError(f"{where}: empty or missing 'image' (id {item_id!r})")
    _check_id(str(item_id), where)
    meta = {k: v for k, v in record.items() if k not in ("id", "image")}
    return CatalogItem(str(item_id), _resolve_image(str(image), base), meta)


def _read_csv(text: str, base: Path) -> list[CatalogItem]:
    reader = csv.DictReader(text.splitlines())
    cols = reader.fieldnames or []
    missing = [c for c in ("id", "image") if c not in cols]
    if missing:
        raise CatalogError(f"catalog CSV lacks column(s) {missing}; has {cols}")
    items = []
    for line_no, row in enumerate(reader, start=2):
        if None in row:
            raise CatalogError(f"line {line_no}: more fields than columns")
        items.append(_make_item(dict(row), base, f"line {line_no}"))
    return items


def _read_jsonl(text: str, base: Path) -> list[CatalogItem]:
    items = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"line {line_no}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise CatalogError(f"line {line_no}: expected a JSON object")
        items.append(_make_item(record, base, f"line {line_no}"))
    return items


def _read_folder(root: Path) -> tuple[list[CatalogItem], str]:
    """Every image file under `root` (by suffix); id = path relative to root, '/'-separated."""
    h = hashlib.sha256()
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            _check_id(rel, str(full))
            st = full.stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            items.append(CatalogItem(rel, os.path.abspath(full), {}))
    return items, h.hexdigest()


def _check_duplicates(items: list[CatalogItem]) -> None:
    counts = Counter(it.id for it in items)
    dups = [i for i, c in counts.items() if c > 1]
    if dups:
        shown = ", ".join(repr(d) for d in dups[:5])
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        raise CatalogError(f"duplicate ids in catalog: {shown}{more}")
