"""Synthetic fashion dataset: procedurally rendered garments with known attributes.

``python -m model.synth --out DIR [--seed S] [--n-train N --n-valid N --n-test N] [--size PX]``
writes the published layout (SPEC section 6) plus ``attributes.json``, ``catalog.csv``,
``boxes.jsonl`` (ground-truth regions of the region attributes) and ``synth.json``.

A figure (mannequin with head, arms, legs and bottoms) wears one garment. Four region
attributes (sleeve length, neckline, hem length and the small button shape) and two global
ones (colour, pattern) are drawn independently per image. Nuisances: garment category
(silhouette), pose, position, scale, rotation, skin/hair/bottoms colours, a belt, textured
backgrounds, lighting gradient, colour cast and pixel noise.

Every image has its own random stream, seeded by ``(seed, split, index)``, so the output is
byte-identical for a seed regardless of how the work is split across processes. Labels and
nuisances come from two separate child streams: rendering the same image with one label
changed (``render(..., overrides=...)``) changes only the pixels that the label controls.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model.osutil import available_cpus

GENERATOR_VERSION = 1
SPLITS = ("train", "valid", "test")
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
QUERY_FRACTION = 0.2  # FashionAI: 3,600 queries / 14,400 candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthAttribute:
    """An attribute of the synthetic data: value names and whether it has a region."""

    name: str
    values: tuple[str, ...]
    region: bool

    @property
    def n_values(self) -> int:
        return len(self.values)


ATTRIBUTES: tuple[SynthAttribute, ...] = (
    SynthAttribute("sleeve_length", ("sleeveless", "short", "elbow", "long"), True),
    SynthAttribute("neckline", ("round", "v", "square", "boat"), True),
    SynthAttribute("hem_length", ("crop", "hip", "knee", "ankle"), True),
    SynthAttribute("button", ("circle", "square", "triangle", "diamond"), True),
    SynthAttribute("colour", ("black", "white", "red", "yellow", "green", "blue"), False),
    SynthAttribute("pattern", ("solid", "stripes", "dots", "checks"), False),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)
REGION_ATTRIBUTES = tuple(a.name for a in ATTRIBUTES if a.region)
CATEGORIES = ("straight", "fitted", "a_line", "coat")

# Category silhouettes (body units; T = shoulder-to-hip length = 1):
# shoulder half-width, chest, waist, hip half-widths, flare per unit below the hip.
_SILHOUETTES = {
    "straight": (0.39, 0.36, 0.35, 0.37, 0.03),
    "fitted": (0.37, 0.35, 0.28, 0.35, 0.02),
    "a_line": (0.36, 0.34, 0.29, 0.40, 0.17),
    "coat": (0.43, 0.41, 0.40, 0.42, 0.07),
}
# Colour classes in HSV ranges: (hue range, saturation range, value range).
_COLOURS = {
    "black": ((0.0, 1.0), (0.0, 0.25), (0.05, 0.18)),
    "white": ((0.0, 1.0), (0.0, 0.06), (0.88, 0.98)),
    "red": ((-0.025, 0.025), (0.65, 0.95), (0.6, 0.92)),
    "yellow": ((0.12, 0.16), (0.65, 0.95), (0.82, 0.98)),
    "green": ((0.28, 0.42), (0.5, 0.9), (0.4, 0.78)),
    "blue": ((0.57, 0.66), (0.55, 0.95), (0.45, 0.88)),
}
_SKIN = ((0.96, 0.80, 0.69), (0.92, 0.72, 0.58), (0.80, 0.60, 0.45), (0.62, 0.44, 0.30),
         (0.42, 0.29, 0.20))
_HAIR = ((0.05, 0.04, 0.04), (0.22, 0.13, 0.07), (0.42, 0.27, 0.14), (0.85, 0.72, 0.45),
         (0.6, 0.6, 0.6))
_BOTTOMS = ((0.22, 0.32, 0.52), (0.72, 0.65, 0.48), (0.2, 0.2, 0.22), (0.68, 0.68, 0.7),
            (0.86, 0.8, 0.68), (0.4, 0.42, 0.28), (0.45, 0.3, 0.25))
_BUTTON_DARK = ((0.07, 0.07, 0.08), (0.33, 0.19, 0.09), (0.1, 0.12, 0.3))
_BUTTON_LIGHT = ((0.96, 0.95, 0.92), (0.86, 0.72, 0.33), (0.8, 0.8, 0.83))
_SS = 2  # supersampling factor for anti-aliased masks


@dataclass
class Rendered:
    """One rendered image with its labels, category and region boxes."""

    image: np.ndarray  # uint8 [H, W, 3]
    labels: dict[str, int]
    category: str
    boxes: dict[str, tuple[int, int, int, int]]  # PIL crop convention: x0, y0, x1, y1
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # float32 alphas [H, W]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")


# --------------------------------------------------------------------------- geometry


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _capsule(p0: np.ndarray, p1: np.ndarray, w0: float, w1: float,
             cap0: bool = True, cap1: bool = True) -> list[np.ndarray]:
    """A thick tapered segment from p0 to p1 (full widths w0, w1) with round ends."""
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    quad = np.array([p0 + n * w0 / 2, p1 + n * w1 / 2, p1 - n * w1 / 2, p0 - n * w0 / 2])
    polys = [quad]
    if cap0:
        polys.append(_ellipse(p0[0], p0[1], w0 / 2, w0 / 2, 16))
    if cap1:
        polys.append(_ellipse(p1[0], p1[1], w1 / 2, w1 / 2, 16))
    return polys


def _mirror(poly: np.ndarray) -> np.ndarray:
    return poly * np.array([-1.0, 1.0])


@lru_cache(maxsize=8)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


class _Painter:
    """Draws body-frame polygons as anti-aliased alpha masks of the canvas."""

    def __init__(self, width: int, height: int, scale: float, angle: float,
                 centre: tuple[float, float]):
        self.w, self.h, self.s = width, height, scale
        c, s = math.cos(angle), math.sin(angle)
        self.mat = scale * np.array([[c, -s], [s, c]])
        self.centre = np.asarray(centre, dtype=float)

    def region(self, polys: Sequence[np.ndarray], pad: int = 2) -> tuple[slice, slice]:
        """Slices of the canvas that contain the polygons."""
        pts = np.concatenate(polys) @ self.mat.T + self.centre
        x0, y0 = np.floor(pts.min(0)).astype(int) - pad
        x1, y1 = np.ceil(pts.max(0)).astype(int) + pad
        return slice(max(0, y0), min(self.h, y1)), slice(max(0, x0), min(self.w, x1))

    def uv(self, region: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates of the pixel centres of a region."""
        sy, sx = region
        c, s = self.mat[0, 0] / self.s, self.mat[1, 0] / self.s
        ys, xs = _grid(self.w, self.h)
        x = xs[sy, sx] + (0.5 - self.centre[0])
        y = ys[sy, sx] + (0.5 - self.centre[1])
        return (c * x + s * y) / self.s, (-s * x + c * y) / self.s

    def mask(self, add: Sequence[np.ndarray], sub: Sequence[np.ndarray] = ()) -> np.ndarray:
        img = Image.new("L", (self.w * _SS, self.h * _SS), 0)
        draw = ImageDraw.Draw(img)
        for fill, polys in ((255, add), (0, sub)):
            for p in polys:
                pts = (p @ self.mat.T + self.centre) * _SS
                draw.polygon(pts.ravel().tolist(), fill=fill)
        return np.asarray(img.reduce(_SS), dtype=np.float32) * (1.0 / 255.0)


# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _garment_colour(name: str, r: np.ndarray) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = _COLOURS[name]
    return _hsv(h0 + (h1 - h0) * r[0], s0 + (s1 - s0) * r[1], v0 + (v1 - v0) * r[2])


def _secondary_colour(name: str, base: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A tint or shade of the base colour, so that the colour class stays dominant."""
    amount = 0.4 + 0.2 * r[1]
    tint = name == "black" or (name != "white" and r[0] < 0.5)
    return base * (1 - amount) + amount if tint else base * (1 - amount)


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _aa(dist_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (positive inside)."""
    return np.clip(dist_px + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------- background


def _lowfreq(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    gw, gh = max(2, cells * w // max(w, h) + 1), max(2, cells * h // max(w, h) + 1)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    kind = int(rng.integers(6))
    base = _hsv(rng.random(), 0.45 * rng.random(), 0.35 + 0.6 * rng.random())
    other = np.clip(base + rng.uniform(-0.25, 0.25, 3).astype(np.float32), 0, 1)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    ys, xs = _grid(w, h)
    if kind == 1:  # wall and floor
        horizon = h * rng.uniform(0.55, 0.92)
        img[ys >= horizon] = other
    elif kind == 2:  # wallpaper stripes
        period, angle = rng.uniform(6, 30), rng.choice([0.0, 0.5 * math.pi, 0.25 * math.pi])
        t = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        m = _aa((0.25 - np.abs((t % 1.0) - 0.5)) * period)
        img += (other - base) * m[..., None]
    elif kind == 3:  # tiles
        period = rng.uniform(14, 48)
        gx, gy = np.abs(((xs / period) % 1.0) - 0.5), np.abs(((ys / period) % 1.0) - 0.5)
        m = _aa((np.maximum(gx, gy) - 0.46) * period)
        img += (other - base) * m[..., None]
    elif kind == 4:  # bokeh
        layer = Image.new("RGB", (w, h), tuple(int(c * 255) for c in base))
        draw = ImageDraw.Draw(layer)
        for _ in range(int(rng.integers(4, 12))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
            col = tuple(int(c) for c in rng.integers(40, 255, 3))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(4, 10)))
        img = np.asarray(layer, dtype=np.float32) / 255.0
    elif kind == 5:  # grainy texture (concrete, fabric)
        img += 0.06 * _lowfreq(rng, w, h, max(w, h) // 3)[..., None]
    img += 0.07 * _lowfreq(rng, w, h, int(rng.integers(2, 6)))[..., None]
    grad = rng.uniform(-0.15, 0.15)
    img *= (1.0 + grad * (ys / h - 0.5))[..., None]
    return img


# --------------------------------------------------------------------------- figure


def _profile(sil: tuple[float, ...], hem: float, shoulder: float) -> np.ndarray:
    """Right half of the garment torso outline from the shoulder down to the hem."""
    _, chest, waist, hip, flare = sil
    knots_y = [0.07, 0.32, 0.62, 1.0]
    knots_w = [shoulder, chest, waist, hip]
    ys = [y for y in knots_y if y < hem] + [hem]
    ws = [float(np.interp(y, knots_y, knots_w)) if y <= 1.0 else hip + flare * (y - 1.0)
          for y in ys]
    return np.array(list(zip(ws, ys, strict=True)), dtype=float)


def _width_at(sil: tuple[float, ...], y: float) -> float:
    _, chest, waist, hip, flare = sil
    if y <= 1.0:
        return float(np.interp(y, [0.07, 0.32, 0.62, 1.0], [sil[0], chest, waist, hip]))
    return hip + flare * (y - 1.0)


def _neckline_cut(kind: str, j: float) -> np.ndarray:
    if kind == "round":
        return _ellipse(0.0, -0.02, 0.16 * j, 0.19 * j)
    if kind == "v":
        return np.array([[-0.14 * j, -0.06], [0.14 * j, -0.06], [0.0, 0.31 * j]])
    if kind == "square":
        return _rect(-0.14 * j, -0.06, 0.14 * j, 0.19 * j)
    return _ellipse(0.0, -0.03, 0.32 * j, 0.09 * j)  # boat


def _button(shape: str, x: float, y: float, d: float) -> np.ndarray:
    if shape == "circle":
        return _ellipse(x, y, d / 2, d / 2, 20)
    if shape == "square":
        h = 0.43 * d
        return _rect(x - h, y - h, x + h, y + h)
    if shape == "triangle":
        r = 0.62 * d
        t = np.array([-0.5 * math.pi, math.pi / 6, 5 * math.pi / 6])
        return np.stack([x + r * np.cos(t), y + 0.1 * d + r * np.sin(t)], axis=1)
    r = 0.6 * d  # diamond
    return np.array([[x, y - r], [x + r, y], [x, y + r], [x - r, y]])


def _blur(alpha: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray((alpha * 255.0 + 0.5).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _bbox(alpha: np.ndarray, pad: int, thr: float = 0.1) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha > thr)
    h, w = alpha.shape
    if len(xs) == 0:
        return (0, 0, w, h)
    return (max(0, int(xs.min()) - pad), max(0, int(ys.min()) - pad),
            min(w, int(xs.max()) + 1 + pad), min(h, int(ys.max()) + 1 + pad))


def _composite(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray,
               region: tuple[slice, slice]) -> None:
    """Alpha-blend a colour (RGB, or an image of the region's shape) into img[region]."""
    a = alpha[region][..., None]
    img[region] *= 1.0 - a
    img[region] += a * colour


def _sample_labels(rng: np.random.Generator) -> dict[str, int]:
    return {a.name: int(rng.integers(a.n_values)) for a in ATTRIBUTES}


def render(seed: int | Sequence[int], size: int = 256,
           overrides: dict[str, int | str] | None = None,
           return_masks: bool = False) -> Rendered:
    """Render one image. ``seed`` seeds both the labels and the nuisances.

    ``overrides`` fixes some labels (index or value name) without changing anything else
    about the image; ``size`` is the short side of the canvas in pixels.
    """
    ss = np.random.SeedSequence(seed)
    label_ss, nuis_ss = ss.spawn(2)
    labels = _sample_labels(np.random.default_rng(label_ss))
    for name, value in (overrides or {}).items():
        attr = ATTRIBUTES[ATTRIBUTE_NAMES.index(name)]
        labels[name] = attr.values.index(value) if isinstance(value, str) else int(value)
        if not 0 <= labels[name] < attr.n_values:
            raise ValueError(f"{name}: value {value!r} out of range")
    return _render(np.random.default_rng(nuis_ss), labels, size, return_masks)


@dataclass(frozen=True, eq=False)
class _Nuisances:
    """Every label-independent random choice of one image."""

    canvas: float  # aspect-ratio draw: square, portrait or landscape
    category: str
    sil: tuple[float, ...]  # jittered silhouette of the category (see _SILHOUETTES)
    r_colour: np.ndarray  # 3 uniforms: position inside the colour class
    r_second: np.ndarray  # 2 uniforms: tint or shade of the pattern colour
    leg_len: float
    leg_spread: float
    arm_angles: np.ndarray  # radians, left and right arm
    r_sleeve: float
    r_hem: float
    neck_j: float  # neckline size jitter
    n_buttons: int
    button_size: float
    belt: bool
    belt_col: np.ndarray
    skin: np.ndarray
    hair: np.ndarray | None
    bottoms_opts: np.ndarray  # preference order of the bottoms colours
    trousers: bool
    shoe: tuple[float, float, float]
    button_pick: int
    pattern_p: dict[str, tuple]  # per pattern: period (body units), orientation/duty, phase
    fill: float  # figure height as a fraction of the canvas
    angle: float  # radians
    offset: np.ndarray  # position in the free space, 2 uniforms

    @property
    def ankle_y(self) -> float:
        """Body-frame y of the ankles."""
        return 0.95 + self.leg_len


@dataclass(frozen=True, eq=False)
class _Figure:
    """Body-frame polygons of the figure once the labels are known."""

    hem: float  # y of the garment's hem
    torso: np.ndarray
    arms: list[np.ndarray]
    sleeves: list[np.ndarray]
    bottoms: list[np.ndarray]
    shoes: list[np.ndarray]
    skin: list[np.ndarray]
    button_d: float  # button diameter
    button_ys: list[float]
    buttons: list[np.ndarray]


@dataclass(frozen=True, eq=False)
class _Masks:
    """Anti-aliased alpha masks of the canvas (float32 [H, W])."""

    torso: np.ndarray  # the torso outline, neckline not cut
    cut: np.ndarray  # the neckline cut-out
    sleeves: np.ndarray
    torso_cut: np.ndarray  # the torso with the neckline cut out
    garment: np.ndarray  # torso_cut and sleeves
    arms: np.ndarray
    buttons: np.ndarray


def _render(rng: np.random.Generator, labels: dict[str, int], size: int,
            return_masks: bool) -> Rendered:
    """Render the figure for ``labels`` with the nuisances drawn from ``rng``.

    ``rng`` is consumed in a fixed order: the nuisances, the fabric grain, the background,
    the lighting and noise. Changing that order changes every image of a seed.
    """
    val = {a.name: a.values[labels[a.name]] for a in ATTRIBUTES}
    nz = _draw_nuisances(rng)  # rng: every per-image choice, label-independent
    P = _place(nz, size)
    fig = _figure(val, nz, P.s)
    m = _masks(P, fig, val["neckline"], nz.neck_j)
    g_reg = P.region([fig.torso, *fig.sleeves], pad=8)
    u, v = P.uv(g_reg)
    base = _garment_colour(val["colour"], nz.r_colour)
    second = _secondary_colour(val["colour"], base, nz.r_second)
    grain = _lowfreq(rng, P.w, P.h, 5)[g_reg]  # rng
    tex = _garment_texture(val["pattern"], nz.pattern_p, u, v, P.s, fig, base, second,
                           m.garment[g_reg], grain)
    img = _background(rng, P.w, P.h)  # rng
    _paint_figure(img, P, nz, fig, m, tex, g_reg, base)
    out = _light_and_noise(rng, img)  # rng
    band = _hem_band(m.torso_cut, g_reg, v, fig.hem)
    masks = {}
    if return_masks:
        masks = {"garment": m.garment, "torso": m.torso_cut, "sleeves": m.sleeves,
                 "arms": m.arms, "cut": m.cut * m.torso, "buttons": m.buttons, "hem_band": band}
    return Rendered(out, dict(labels), nz.category, _boxes(m, band, P.s), masks)


def _draw_nuisances(rng: np.random.Generator) -> _Nuisances:
    """Draw the nuisances, always in this order and whatever the labels are."""
    canvas = rng.random()
    cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    sil = tuple(x * rng.uniform(0.94, 1.06) for x in _SILHOUETTES[cat])
    r_colour, r_second = rng.random(3), rng.random(2)
    leg_len, leg_spread = 1.62 * rng.uniform(0.96, 1.04), rng.uniform(0.0, 0.12)
    arm_angles = np.radians(rng.uniform(5, 26, 2))
    r_sleeve, r_hem, neck_j = rng.random(), rng.random(), rng.uniform(0.9, 1.1)
    n_buttons, button_size = int(rng.integers(2, 5)), rng.uniform(0.92, 1.08)
    belt = rng.random() < 0.25
    belt_col = np.array((_BUTTON_DARK + _HAIR[1:4])[int(rng.integers(6))])
    skin = np.array(_SKIN[int(rng.integers(len(_SKIN)))]) * rng.uniform(0.93, 1.05)
    hair = np.array(_HAIR[int(rng.integers(len(_HAIR)))]) if rng.random() < 0.85 else None
    bottoms_opts = rng.permutation(len(_BOTTOMS))
    trousers, shoe = rng.random() < 0.5, (0.08, 0.07, 0.07) if rng.random() < 0.7 else (
        0.92, 0.92, 0.9)
    button_pick = int(rng.integers(3))
    pattern_p = {
        "stripes": (rng.uniform(0.10, 0.2), rng.choice([0.0, 0.5, 0.25, -0.25]) * math.pi,
                    rng.uniform(0.28, 0.42), rng.random()),
        "dots": (rng.uniform(0.11, 0.19), rng.uniform(0.22, 0.31), rng.random() < 0.5,
                 rng.random(2)),
        "checks": (rng.uniform(0.12, 0.22), rng.uniform(0.3, 0.4), rng.random(2)),
    }
    fill, angle = rng.uniform(0.8, 0.96), math.radians(rng.uniform(-7, 7))
    offset = rng.random(2)
    return _Nuisances(
        canvas=canvas, category=cat, sil=sil, r_colour=r_colour, r_second=r_second,
        leg_len=leg_len, leg_spread=leg_spread, arm_angles=arm_angles, r_sleeve=r_sleeve,
        r_hem=r_hem, neck_j=neck_j, n_buttons=n_buttons, button_size=button_size, belt=belt,
        belt_col=belt_col, skin=skin, hair=hair, bottoms_opts=bottoms_opts, trousers=trousers,
        shoe=shoe, button_pick=button_pick, pattern_p=pattern_p, fill=fill, angle=angle,
        offset=offset)


# --------------------------------------------------------------------------- placement


def _canvas_size(size: int, canvas: float) -> tuple[int, int]:
    """Width and height: square, portrait or landscape (long side 1.25 x ``size``)."""
    w = h = size
    if canvas > 0.5:
        w, h = (size, round(1.25 * size)) if canvas < 0.85 else (round(1.25 * size), size)
    return w, h


def _envelope(nz: _Nuisances) -> np.ndarray:
    """Points that bound the figure whatever its labels (head, hands, feet, longest hem)."""
    ankle_y = nz.ankle_y
    flare_w = nz.sil[3] + nz.sil[4] * (ankle_y - 1.0)
    env = [_ellipse(0, -0.42, 0.17, 0.2)]
    for side in (-1, 1):
        a = nz.arm_angles[0 if side < 0 else 1]
        tip = np.array([side * 0.33, 0.1]) + np.array([side * math.sin(a), math.cos(a)]) * 1.05
        env.append(_ellipse(tip[0], tip[1], 0.1, 0.1, 8))
        env.append(np.array([[side * (0.2 + nz.leg_spread), ankle_y + 0.12],
                             [side * flare_w, ankle_y - 0.02], [side * 0.45, 0.07]]))
    return np.concatenate(env)


def _place(nz: _Nuisances, size: int) -> _Painter:
    """Scale, rotate and position the figure's envelope on the canvas."""
    w, h = _canvas_size(size, nz.canvas)
    ca, sa = math.cos(nz.angle), math.sin(nz.angle)
    rot = _envelope(nz) @ np.array([[ca, -sa], [sa, ca]]).T
    lo, hi = rot.min(0), rot.max(0)
    scale = min(nz.fill * size / (hi[1] - lo[1]), 0.96 * size / (hi[0] - lo[0]))
    free = size - scale * (hi - lo)
    origin = np.array([(w - size) / 2, (h - size) / 2])
    centre = origin + nz.offset * free - scale * lo
    return _Painter(w, h, scale, nz.angle, (float(centre[0]), float(centre[1])))


# --------------------------------------------------------------------------- label geometry


def _hem_y(hem_length: str, nz: _Nuisances) -> float:
    """Body-frame y of the garment's hem for a hem-length value."""
    return {
        "crop": 0.52 + 0.08 * nz.r_hem,
        "hip": 1.02 + 0.12 * nz.r_hem,
        "knee": 0.95 + 0.5 * nz.leg_len - 0.06 + 0.12 * nz.r_hem,
        "ankle": nz.ankle_y - 0.05 - 0.07 * nz.r_hem,
    }[hem_length]


def _torso_polygon(nz: _Nuisances, hem: float, sleeveless: bool) -> np.ndarray:
    """The closed garment torso outline, from the shoulders down to the hem."""
    shoulder = nz.sil[0] * (0.8 if sleeveless else 1.0)
    right = _profile(nz.sil, hem, shoulder)
    half = np.concatenate([np.array([[0.2, -0.005]]), right])
    poly = np.concatenate([half, _mirror(half)[::-1]])
    if nz.category == "a_line" and hem > 1.2:
        poly = np.concatenate([poly[: len(half)], [[0.0, hem + 0.03]], poly[len(half):]])
    return poly


def _sleeve_fraction(sleeve_length: str, r_sleeve: float) -> float:
    """How far down the arm the sleeve reaches (0: sleeveless, about 1: the wrist)."""
    return {"sleeveless": 0.0, "short": 0.24 + 0.1 * r_sleeve,
            "elbow": 0.5 + 0.1 * r_sleeve, "long": 0.92 + 0.06 * r_sleeve}[sleeve_length]


def _limbs(nz: _Nuisances, frac: float) -> dict[str, list[np.ndarray]]:
    """Arm, sleeve, leg, bottoms and shoe polygons of both sides."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("arms", "sleeves", "legs", "bottoms",
                                                          "shoes")}
    ankle_y = nz.ankle_y
    for side, a in ((-1, nz.arm_angles[0]), (1, nz.arm_angles[1])):
        s0 = np.array([side * 0.33, 0.1])
        d = np.array([side * math.sin(a), math.cos(a)])
        out["arms"] += _capsule(s0, s0 + d, 0.14, 0.085)
        hand = s0 + d * 1.05
        out["arms"].append(_ellipse(float(hand[0]), float(hand[1]), 0.065, 0.075, 14))
        if frac > 0:
            w1 = 0.14 + (0.085 - 0.14) * frac + 0.05 + (0.04 if frac < 0.7 else 0.0)
            out["sleeves"] += _capsule(s0 - d * 0.05, s0 + d * frac, 0.19, w1, cap1=False)
        hip = np.array([side * 0.15, 0.95])
        ankle = np.array([side * (0.15 + nz.leg_spread), ankle_y])
        out["legs"] += _capsule(hip, ankle, 0.2, 0.085)
        out["shoes"].append(_ellipse(ankle[0] + side * 0.04, ankle_y + 0.05, 0.09, 0.05, 16))
        t_end = 1.0 if nz.trousers else 0.3
        out["bottoms"] += _capsule(hip, hip + (ankle - hip) * t_end, 0.24,
                                   0.24 + (0.11 - 0.24) * t_end, cap1=False)
    out["bottoms"].append(_rect(-0.32, 0.82, 0.32, 1.05))
    return out


def _skin_polygons(legs: list[np.ndarray]) -> list[np.ndarray]:
    """Bare skin under the clothes: legs, head, neck and torso."""
    return legs + [
        _ellipse(0, -0.42, 0.15, 0.185), _rect(-0.065, -0.27, 0.065, 0.05),
        np.concatenate([[[0.36, 0.06], [0.3, 0.3], [0.26, 0.62], [0.3, 0.95]],
                        [[-0.3, 0.95], [-0.26, 0.62], [-0.3, 0.3], [-0.36, 0.06]]]),
    ]


def _button_row(nz: _Nuisances, hem: float, scale: float) -> tuple[float, list[float]]:
    """Button diameter (body units, about 8-11 px at size 256) and the buttons' heights."""
    d_btn = min(0.14 * scale * nz.button_size, 14.0) / scale
    y_max = min(hem - 0.08, 0.57 if nz.belt and hem >= 0.9 else 9.0)
    n_btn = max(1, min(nz.n_buttons, int((y_max - 0.43) // 0.14) + 1))
    return d_btn, [0.43 + 0.14 * k for k in range(n_btn)]


def _figure(val: dict[str, str], nz: _Nuisances, scale: float) -> _Figure:
    """The label-dependent geometry: hem, torso outline, sleeves, limbs and buttons."""
    hem = _hem_y(val["hem_length"], nz)
    torso = _torso_polygon(nz, hem, val["sleeve_length"] == "sleeveless")
    limbs = _limbs(nz, _sleeve_fraction(val["sleeve_length"], nz.r_sleeve))
    d_btn, btn_ys = _button_row(nz, hem, scale)
    return _Figure(hem=hem, torso=torso, arms=limbs["arms"], sleeves=limbs["sleeves"],
                   bottoms=limbs["bottoms"], shoes=limbs["shoes"],
                   skin=_skin_polygons(limbs["legs"]), button_d=d_btn, button_ys=btn_ys,
                   buttons=[_button(val["button"], 0.0, y, d_btn) for y in btn_ys])


def _masks(P: _Painter, fig: _Figure, neckline: str, neck_j: float) -> _Masks:
    """Rasterise the garment, neckline, sleeves, arms and buttons."""
    torso = P.mask([fig.torso])
    cut = P.mask([_neckline_cut(neckline, neck_j)])
    sleeves = P.mask(fig.sleeves) if fig.sleeves else np.zeros_like(torso)
    torso_cut = torso * (1.0 - cut)
    return _Masks(torso=torso, cut=cut, sleeves=sleeves, torso_cut=torso_cut,
                  garment=np.maximum(torso_cut, sleeves), arms=P.mask(fig.arms),
                  buttons=P.mask(fig.buttons))


# --------------------------------------------------------------------------- texture


def _pattern_alpha(pattern: str, params: dict[str, tuple], u: np.ndarray, v: np.ndarray,
                   scale: float) -> np.ndarray:
    """Coverage of the pattern's second colour at body coordinates ``(u, v)``."""
    if pattern == "stripes":
        period, ang, duty, phase = params["stripes"]
        t = (u * math.sin(ang) + v * math.cos(ang)) / period + phase
        return _aa((duty / 2 - np.abs((t % 1.0) - 0.5)) * period * scale)
    if pattern == "dots":
        period, rad, stagger, ph = params["dots"]
        row = np.floor(v / period + ph[1])
        du = ((u / period + ph[0] + (0.5 * row if stagger else 0.0)) % 1.0) - 0.5
        dv = ((v / period + ph[1]) % 1.0) - 0.5
        return _aa((rad - np.hypot(du, dv)) * period * scale)
    if pattern == "checks":
        period, duty, ph = params["checks"]
        a1 = _aa((duty / 2 - np.abs(((u / period + ph[0]) % 1.0) - 0.5)) * period * scale)
        a2 = _aa((duty / 2 - np.abs(((v / period + ph[1]) % 1.0) - 0.5)) * period * scale)
        return 0.4 * (a1 + a2)  # gingham: crossings darker than single bands
    return np.zeros_like(u)  # solid


def _garment_texture(pattern: str, params: dict[str, tuple], u: np.ndarray, v: np.ndarray,
                     scale: float, fig: _Figure, base: np.ndarray, second: np.ndarray,
                     garment: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Colour of the garment's region: pattern, a plain placket, folds and fabric grain."""
    pm = _pattern_alpha(pattern, params, u, v, scale)
    placket = (np.abs(u) < 0.62 * fig.button_d + 0.012) & (v > 0.2) & (
        v < fig.button_ys[-1] + 0.1)
    pm[placket] = 0.0
    tex = base + (second - base) * pm[..., None]
    tex[placket] *= 0.93
    shade = 0.8 + 0.2 * _blur(garment, 1.5)
    shade += 0.05 * grain
    tex *= shade[..., None]
    return tex


# --------------------------------------------------------------------------- composition


def _bottoms_colour(opts: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The first preferred bottoms colour that stands apart from the garment's."""
    return next((np.array(_BOTTOMS[i]) for i in opts
                 if np.abs(np.array(_BOTTOMS[i]) - base).sum() > 0.6), np.array(_BOTTOMS[0]))


def _paint_belt(img: np.ndarray, P: _Painter, sil: tuple[float, ...], colour: np.ndarray) -> None:
    """Paint a belt with its buckle around the waist."""
    wt, wb = _width_at(sil, 0.63) + 0.01, _width_at(sil, 0.7) + 0.01
    band = np.array([[-wt, 0.63], [wt, 0.63], [wb, 0.7], [-wb, 0.7]])
    _composite(img, P.mask([band]), colour, P.region([band]))
    outer = _rect(-0.055, 0.62, 0.055, 0.71)
    buckle = P.mask([outer], [_rect(-0.03, 0.64, 0.03, 0.69)])
    _composite(img, buckle, np.array([0.8, 0.75, 0.55]), P.region([outer]))


def _paint_figure(img: np.ndarray, P: _Painter, nz: _Nuisances, fig: _Figure, m: _Masks,
                  tex: np.ndarray, g_reg: tuple[slice, slice], base: np.ndarray) -> None:
    """Paint the figure onto the background, back to front."""
    shadow_poly = _ellipse(0.0, nz.ankle_y + 0.08, 0.55, 0.07)
    sh_reg = P.region([shadow_poly], pad=12)
    img[sh_reg] *= (1.0 - 0.35 * _blur(P.mask([shadow_poly])[sh_reg], 4))[..., None]
    _composite(img, np.maximum(P.mask(fig.skin), m.arms), nz.skin,
               P.region(fig.skin + fig.arms))
    if nz.hair is not None:
        hair_poly = _ellipse(0, -0.485, 0.165, 0.14)
        _composite(img, P.mask([hair_poly]), nz.hair, P.region([hair_poly]))
    _composite(img, P.mask(fig.shoes), np.array(nz.shoe), P.region(fig.shoes))
    _composite(img, P.mask(fig.bottoms), _bottoms_colour(nz.bottoms_opts, base),
               P.region(fig.bottoms))
    _composite(img, m.garment, tex, g_reg)
    if nz.category == "coat":
        line_poly = _rect(-0.012, 0.0, 0.012, fig.hem)
        _composite(img, P.mask([line_poly]) * m.torso_cut, base * 0.45, P.region([line_poly]))
    if nz.belt and fig.hem >= 0.9:
        _paint_belt(img, P, nz.sil, nz.belt_col)
    bpal = _BUTTON_DARK if _luma(base) > 0.45 else _BUTTON_LIGHT
    _composite(img, m.buttons * m.torso_cut, np.array(bpal[nz.button_pick]),
               P.region(fig.buttons))


def _light_and_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting gradient, exposure, colour cast and sensor noise; returns uint8 pixels."""
    h, w = img.shape[:2]
    ys, xs = _grid(w, h)
    theta, k = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.35)
    light = 1.0 + k * ((xs - w / 2) * math.cos(theta) + (ys - h / 2) * math.sin(theta)) / (
        0.5 * max(w, h))
    img *= (light * rng.uniform(0.88, 1.08))[..., None] * rng.uniform(0.95, 1.05, 3).astype(
        np.float32)
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(0.004, 0.025)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- ground truth


def _hem_band(torso_cut: np.ndarray, g_reg: tuple[slice, slice], v: np.ndarray,
              hem: float) -> np.ndarray:
    """The garment's pixels just above and at its hem (they decide the hem length)."""
    band = np.zeros_like(torso_cut)
    band[g_reg] = torso_cut[g_reg] * ((v > hem - 0.1) & (v < hem + 0.03))
    return band


def _boxes(m: _Masks, band: np.ndarray, scale: float) -> dict[str, tuple[int, int, int, int]]:
    """Boxes around the pixels that decide each region attribute."""
    pad = max(3, round(0.06 * scale))
    return {
        "sleeve_length": _bbox(np.maximum(m.arms, m.sleeves), pad),
        "neckline": _bbox(m.cut * m.torso, pad),
        "hem_length": _bbox(band, pad),
        "button": _bbox(m.buttons, 2),
    }


# --------------------------------------------------------------------------- dataset


def _item_seed(seed: int, split: str, index: int) -> list[int]:
    return [int(seed), _SPLIT_CODE[split], int(index)]


def _work(task: tuple) -> tuple:
    seed, split, index, path, size, quality = task
    r = render(_item_seed(seed, split, index), size=size)
    Image.fromarray(r.image, "RGB").save(path, quality=quality, subsampling=0)
    return tuple(r.labels[n] for n in ATTRIBUTE_NAMES), r.category, r.boxes


def _query_candidate(n: int, seed: int, split: str) -> tuple[list, list, np.ndarray]:
    """One attribute per image (balanced), then 20% of each attribute's images as queries."""
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], 7919])
    attrs = np.arange(n) % len(ATTRIBUTES)
    rng.shuffle(attrs)
    is_query = np.zeros(n, bool)
    for a in range(len(ATTRIBUTES)):
        ids = rng.permutation(np.flatnonzero(attrs == a))
        n_q = max(1, round(QUERY_FRACTION * len(ids))) if len(ids) >= 2 else 0
        is_query[ids[:n_q]] = True
    return list(np.flatnonzero(is_query)), list(np.flatnonzero(~is_query)), attrs


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "synth.json").exists():
            raise FileExistsError(f"{out} is not empty and was not written by model.synth")
        shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def generate(out_dir: str | os.PathLike, seed: int = 0, n_train: int = 6000,
             n_valid: int = 1200, n_test: int = 1200, size: int = 256,
             workers: int | None = None, quality: int = 92, progress: bool = False) -> dict:
    """Write a synthetic dataset in the published layout; returns a summary dict.

    ``workers``: processes drawing the images (default: the usable CPUs); ``progress``: log
    the count every 500 images (INFO).
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels (224 or more for training), got {size}")
    out = Path(out_dir)
    _prepare_out(out)
    counts = {"train": int(n_train), "valid": int(n_valid), "test": int(n_test)}
    tasks = []
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        tasks += [(seed, split, i, str(out / "images" / split / f"{i:06d}.jpg"), size, quality)
                  for i in range(counts[split])]
    t0 = time.perf_counter()
    workers = workers or available_cpus()
    if workers > 1 and len(tasks) >= 64:
        with get_context().Pool(min(workers, len(tasks) // 32 + 1)) as pool:
            results = []
            for i, res in enumerate(pool.imap(_work, tasks, chunksize=16)):
                results.append(res)
                if progress and (i + 1) % 500 == 0:
                    log.info("  %d/%d images", i + 1, len(tasks))
    else:
        results = [_work(t) for t in tasks]
    elapsed = time.perf_counter() - t0
    _write_layout(out, seed, counts, results)
    summary = {"generator": "model.synth", "version": GENERATOR_VERSION, "seed": int(seed),
               "size": int(size), "counts": counts, "seconds": round(elapsed, 2),
               "images_per_second": round(len(tasks) / max(elapsed, 1e-9), 1)}
    meta = {k: v for k, v in summary.items() if k not in ("seconds", "images_per_second")}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary


def _write_layout(out: Path, seed: int, counts: dict[str, int], results: list) -> None:
    attrs_json = [{"name": a.name, "n_values": a.n_values, "values": list(a.values),
                   "kind": "region" if a.region else "global"} for a in ATTRIBUTES]
    (out / "attributes.json").write_text(json.dumps(attrs_json, indent=2) + "\n")
    pos = 0
    catalog_rows, box_lines = [], []
    for split in SPLITS:
        n = counts[split]
        res = results[pos: pos + n]
        pos += n
        names = [f"images/{split}/{i:06d}.jpg" for i in range(n)]
        (out / f"filenames_{split}.txt").write_text("".join(p + "\n" for p in names))
        if split == "train":
            lines = [f"{i} " + " ".join(f"{a} {v}" for a, v in enumerate(r[0]))
                     for i, r in enumerate(res)]
            (out / "label_train.txt").write_text("".join(x + "\n" for x in lines))
        else:
            queries, candidates, attrs = _query_candidate(n, seed, split)
            for kind, ids in (("query", queries), ("candidate", candidates)):
                lines = [f"{i} {attrs[i]} {res[i][0][attrs[i]]}" for i in ids]
                (out / f"{kind}_{split}.txt").write_text("".join(x + "\n" for x in lines))
        for i, (labels, category, boxes) in enumerate(res):
            catalog_rows.append([f"{split}-{i:06d}", names[i], split, category]
                                + [a.values[v] for a, v in zip(ATTRIBUTES, labels, strict=True)])
            box_lines.append(json.dumps({"split": split, "image_id": i,
                                         "boxes": {k: list(b) for k, b in boxes.items()}}))
    with open(out / "catalog.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "split", "category", *ATTRIBUTE_NAMES])
        writer.writerows(catalog_rows)
    (out / "boxes.jsonl").write_text("".join(x + "\n" for x in box_lines))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-valid", type=int, default=1200)
    p.add_argument("--n-test", type=int, default=1200)
    p.add_argument("--size", type=int, default=256, help="short side of the images in pixels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        summary = generate(a.out, seed=a.seed, n_train=a.n_train, n_valid=a.n_valid,
                           n_test=a.n_test, size=a.size, workers=a.workers, quality=a.quality,
                           progress=True)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum(summary["counts"].values())
    print(f"wrote {total} images to {a.out} in {summary['seconds']} s "
          f"({summary['images_per_second']} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
