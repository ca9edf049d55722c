"""Safe image decoding: every bad file becomes an ImageError with a reason code."""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; larger is treated as a decompression bomb
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a larger image file is refused before reading it

ImageSource = str | os.PathLike | bytes | BinaryIO


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, only if it is a regular file (symlinks followed).

    The file is opened without blocking (a FIFO with no writer would hang ``open``) and
    checked with ``fstat`` on the open descriptor (no race with a swapped path); a FIFO, a
    device (``/dev/zero``), a socket or a directory is an ImageError ``not_a_file``, an
    absent file ``missing``."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageError("missing", "no such file", name) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
            raise ImageError("not_a_file", f"{kind}, not a regular file", name)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_image_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file (:func:`open_regular_file`), read at most ``max_bytes``
    + 1: ImageError ``too_large`` when it holds more (whatever its size said)."""
    with open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ImageError("too_large", f"{size} bytes exceeds {max_bytes}", str(path))
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError("too_large", f"more than {max_bytes} bytes", str(path))
    return data


def open_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image fully into RGB, checking its size before decoding pixels (a path
    must name a regular file: :func:`open_regular_file`)."""
    name = None
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        fp: BinaryIO = open_regular_file(source)
        if os.fstat(fp.fileno()).st_size == 0:
            fp.close()
            raise ImageError("empty", "file is empty", name)
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
