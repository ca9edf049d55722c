"""Images that cannot be used and why: the image check and the one writer of ``rejected.csv``.

The same rules (:mod:`model.imageio`: a regular file, at most ``max_bytes``, a decodable image
of at most ``max_pixels``) and the same file (``path,id,reason``) for the indexer's embedding
run and the dataset builder (``python -m model.dataset``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from model.errors import ImageError
from model.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, open_image, read_image_file
from model.osutil import atomic_open

REJECTED = "rejected.csv"


class Reject(NamedTuple):
    """A skipped catalog item and why."""

    path: str
    id: str
    reason: str
    detail: str = ""


def write_rejected(folder: str | os.PathLike[str], rejects: Iterable[Reject]) -> int:
    """`folder/rejected.csv` (`path,id,reason`, one line per skipped item), written
    atomically and durably; returns the count. The one writer of the file, for a store, an
    index version and a dataset alike."""
    n = 0
    with atomic_open(Path(folder) / REJECTED, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "reason"])
        for r in rejects:
            w.writerow([r.path, r.id, r.reason])
            n += 1
    return n


def image_reject(path: str, item_id: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Reject | None:
    """None when ``path`` is a usable image; else the :class:`Reject` the indexer would write
    for it (reasons: ImageError's codes, ``unreadable``, ``decode_error``)."""
    try:
        open_image(read_image_file(path, max_bytes), max_pixels=max_pixels)
    except ImageError as exc:
        return Reject(path, item_id, exc.reason, str(exc))
    except FileNotFoundError:
        return Reject(path, item_id, "missing", "no such file")
    except OSError as exc:
        return Reject(path, item_id, "unreadable", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the job
        return Reject(path, item_id, "decode_error", f"{type(exc).__name__}: {exc}")
    return None
