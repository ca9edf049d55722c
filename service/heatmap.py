"""Render an attention map over its image as a PNG heat-map with the RoI box."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

Rect = tuple[int, int, int, int]

#: Longest side of the rendered overlay (the box and map are scaled to fit).
OVERLAY_MAX_SIDE = 512


def centre_crop_region(width: int, height: int) -> Rect:
    """The square centre crop that a resize-short-side + centre-crop pipeline looks at."""
    side = min(width, height)
    x0 = (width - side) // 2
    y0 = (height - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def _colormap(values: np.ndarray) -> np.ndarray:
    """0..1 floats [h, w] -> uint8 RGB [h, w, 3], a jet-like blue-green-yellow-red ramp."""
    v = np.clip(values, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def render_overlay(
    image: Image.Image,
    attention: np.ndarray,
    region: Rect,
    box: Rect | None,
    alpha: float = 0.5,
) -> bytes:
    """PNG bytes: ``attention`` stretched over ``region`` of ``image``, ``box`` outlined."""
    img = image.convert("RGB")
    scale = min(1.0, OVERLAY_MAX_SIDE / max(img.width, img.height))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)

    def s(rect: Rect) -> Rect:
        return tuple(int(round(c * scale)) for c in rect)  # type: ignore[return-value]

    rx0, ry0, rx1, ry1 = s(region)
    rw, rh = max(1, rx1 - rx0), max(1, ry1 - ry0)
    att = np.asarray(attention, dtype=np.float32)
    lo, hi = float(att.min()), float(att.max())
    norm = (att - lo) / (hi - lo) if hi > lo else np.zeros_like(att)
    heat = Image.fromarray(norm.astype(np.float32)).resize((rw, rh), Image.Resampling.BILINEAR)
    heat_rgb = Image.fromarray(_colormap(np.asarray(heat)))
    base = img.crop((rx0, ry0, rx0 + rw, ry0 + rh))
    img.paste(Image.blend(base, heat_rgb, alpha), (rx0, ry0))
    if box is not None:
        draw = ImageDraw.Draw(img)
        width = max(2, round(min(img.size) / 100))
        bx0, by0, bx1, by1 = s(box)
        draw.rectangle((bx0, by0, max(bx0, bx1 - 1), max(by0, by1 - 1)), outline=(255, 255, 255),
                       width=width + 2)
        draw.rectangle((bx0, by0, max(bx0, bx1 - 1), max(by0, by1 - 1)), outline=(230, 0, 90),
                       width=width)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    return out.getvalue()
