"""Safe image decoding: every bad file becomes an ImageError with a reason code."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; larger is treated as a decompression bomb

ImageSource = str | os.PathLike | bytes | BinaryIO


def open_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image fully into RGB, checking its size before decoding pixels."""
    name = None
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        path = Path(source)
        if not path.is_file():
            raise ImageError("missing", "no such file", name)
        if path.stat().st_size == 0:
            raise ImageError("empty", "file is empty", name)
        fp: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below
    elif isinstance(source, bytes):
        if not source:
            raise ImageError("empty", "no image data")
        fp = io.BytesIO(source)
    else:
        fp = source
    try:
        try:
            img = Image.open(fp)
        except UnidentifiedImageError as exc:
            raise ImageError("not_an_image", "not a recognised image format", name) from exc
        except Image.DecompressionBombError as exc:
            raise ImageError("too_large", str(exc), name) from exc
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError("not_an_image", f"invalid image size {w}x{h}", name)
        if w * h > max_pixels:
            raise ImageError("too_large", f"{w}x{h} pixels exceeds the limit of {max_pixels}", name)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError("truncated", f"image data is truncated or corrupt ({exc})",
                             name) from exc
        return ImageOps.exif_transpose(img).convert("RGB")
    finally:
        if name is not None:
            fp.close()
