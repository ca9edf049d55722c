"""Reading and safely decoding uploaded images and indexed items' images."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import UploadFile
from PIL import Image

from indexer.items import Item

from .errors import ApiError
from .settings import Settings

if TYPE_CHECKING:
    from .protocols import CatalogIndexLike
    from .state import Snapshot

Prepared = TypeVar("Prepared")
P = ParamSpec("P")
T = TypeVar("T")

SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"

_IMAGE_ERRORS = {
    # model.errors.ImageError.reason -> (status, code, message)
    "not_an_image": (415, "unsupported_media_type",
                     f"the uploaded file is not a supported image ({SUPPORTED})"),
    "truncated": (422, "corrupt_image", "the uploaded image is truncated or corrupt"),
    "empty": (422, "empty_image", "the uploaded file is empty"),
    "too_large": (413, "image_too_large", "the image has too many pixels"),
    "missing": (404, "image_missing", "the image file is missing"),
    "not_a_file": (404, "image_missing", "the image is not a regular file"),
}


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """The upload's bytes, or 413/422 when it is too large or empty."""
    limit = settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "payload_too_large",
                       f"upload too large: the limit is {limit} bytes (ASEN_MAX_UPLOAD_BYTES)",
                       details={"limit_bytes": limit})
    if not data:
        raise ApiError(422, "empty_image", "the uploaded file is empty")
    return data


def _decode(source: bytes | Path, max_pixels: int) -> Image.Image:
    from model.errors import ImageError
    from model.imageio import open_image

    try:
        return open_image(source if isinstance(source, bytes) else str(source),
                          max_pixels=max_pixels)
    except ImageError as exc:
        status, code, message = _IMAGE_ERRORS.get(
            exc.reason, (422, "invalid_image", "the image cannot be decoded"))
        details: dict[str, object] = {"reason": exc.reason}
        if exc.reason == "too_large":
            message = f"{message}: {exc} (ASEN_MAX_IMAGE_PIXELS)"
            details["max_pixels"] = max_pixels
        raise ApiError(status, code, message, details=details) from exc
    except Exception as exc:  # any other decoder failure is still the client's file
        raise ApiError(422, "corrupt_image", "the uploaded image cannot be decoded",
                       details={"reason": type(exc).__name__}) from exc


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = \
    weakref.WeakKeyDictionary()


async def in_decode_pool(settings: Settings, fn: Callable[P, T], *args: P.args,
                         **kwargs: P.kwargs) -> T:
    """Run ``fn`` on a worker thread, at most ``settings.decode_concurrency`` at once.

    Unbounded, 16 concurrent uploads decode and preprocess on 16 threads at once and crowd
    the inference thread off a small machine's cores (docs/BENCHMARKS.md, micro-batching)."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None or limiter.total_tokens != settings.decode_concurrency:
        limiter = _limiters[loop] = CapacityLimiter(settings.decode_concurrency)
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)


async def decode_image(source: bytes | Path, settings: Settings) -> Image.Image:
    """Decode bytes or a file into RGB off the event loop; client errors become ApiError."""
    return await in_decode_pool(settings, _decode, source, settings.max_image_pixels)


def _decode_and_prepare(source: bytes | Path, max_pixels: int,
                        prepare: Callable[[Image.Image], Prepared]) -> Prepared:
    return prepare(_decode(source, max_pixels))


async def prepare_image(source: bytes | Path, settings: Settings,
                        prepare: Callable[[Image.Image], Prepared]) -> Prepared:
    """Decode and preprocess (``prepare``: the embedder's preprocessor) in the decode pool,
    so the inference thread only runs the network; client errors become ApiError."""
    return await in_decode_pool(settings, _decode_and_prepare, source,
                                settings.max_image_pixels, prepare)


def deferred_image(source: bytes, settings: Settings,
                   prepare: Callable[[Image.Image], Prepared]) -> Callable[[], Prepared]:
    """Decode and preprocess ``source`` when called, on whatever thread calls it (the
    inference thread, for a request that is alone: service/batching.py)."""
    return partial(_decode_and_prepare, source, settings.max_image_pixels, prepare)


def _image_roots(roots: Sequence[Path], index: CatalogIndexLike) -> list[Path]:
    """ASEN_IMAGE_ROOTS plus the folders where the index keeps images itself (the live
    changes' uploads); no restriction when ASEN_IMAGE_ROOTS is unset."""
    return [*roots, *index.image_dirs] if roots else []


def _servable(raw: str, roots: Sequence[Path]) -> tuple[Path, str]:
    """An item's image file (symlinks resolved) and its sniffed media type; ValueError or
    OSError when it is not servable.

    The path comes from the index, never from the client; it must be a regular image file
    and, when ASEN_IMAGE_ROOTS is set, lie inside one of those folders (symlinks resolved).
    """
    path = Path(raw).resolve(strict=True)
    if not path.is_file():
        raise ValueError("not a regular file")
    if roots and not any(path.is_relative_to(root.resolve()) for root in roots):
        raise ValueError("outside ASEN_IMAGE_ROOTS")
    with Image.open(path) as img:
        mime = Image.MIME.get(img.format or "", "")
    if not mime.startswith("image/"):
        raise ValueError("not an image")
    return path, mime


def _unavailable(item: Item, reason: str | None = None) -> ApiError:
    details: dict[str, object] = {"item_id": item.id}
    if reason is not None:
        details["reason"] = reason
    return ApiError(404, "image_unavailable", f"the image of item {item.id!r} is not available",
                    details=details)


async def item_image_file(item: Item, settings: Settings, snap: Snapshot) -> tuple[Path, str]:
    """The file of an indexed item's image and its media type: the one check (a regular
    image file, inside ASEN_IMAGE_ROOTS when set) before any item image is opened; 404
    image_unavailable otherwise."""
    roots = await snap.call(_image_roots, settings.image_roots, snap.index)
    try:
        return await in_decode_pool(settings, _servable, item.image, roots)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _unavailable(item) from exc


async def item_image(item: Item, settings: Settings, snap: Snapshot) -> Image.Image:
    """Decode an indexed item's image, checked by :func:`item_image_file` first; 404 when
    the server-side file is unusable."""
    path, _ = await item_image_file(item, settings, snap)
    try:
        return await decode_image(path, settings)
    except ApiError as exc:
        raise _unavailable(item, exc.code) from exc
