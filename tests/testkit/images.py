"""Encoded images for the tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image


def encode_image(img: Image.Image, fmt: str = "PNG", **save: Any) -> bytes:
    """``img`` encoded as ``fmt`` (Pillow's ``save`` options in ``save``)."""
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def image_bytes(rgb: tuple[int, int, int] = (230, 30, 30), size: tuple[int, int] = (48, 64),
                fmt: str = "PNG") -> bytes:
    """An encoded image of one colour, ``size`` = (width, height)."""
    return encode_image(Image.new("RGB", size, rgb), fmt)


def write_image(path: Path, rgb: tuple[int, int, int] = (200, 10, 10),
                size: tuple[int, int] = (32, 24)) -> Path:
    """An image of one colour saved to ``path`` (format from its suffix; folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path
