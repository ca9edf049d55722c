"""The attention heat-map (service/heatmap.py): drawn on the crop the model saw, at the
image's size (at most 512 px), with the box."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.heatmap import centre_crop_region, render_overlay


def test_overlay_png_has_image_size_and_box():
    img = Image.new("RGB", (300, 200), (90, 90, 90))
    att = np.zeros((14, 14), np.float32)
    att[3:6, 4:9] = 1.0
    region = centre_crop_region(300, 200)
    assert region == (50, 0, 250, 200)
    png = render_overlay(img, att / att.sum(), region, (60, 10, 120, 70))
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG" and out.size == (300, 200)
    px = np.asarray(out.convert("RGB"))
    assert px[0, 0].tolist() == [90, 90, 90]          # outside the crop: untouched
    assert px[40, 150].tolist() != [90, 90, 90]       # inside: heat-map blended
    big = render_overlay(Image.new("RGB", (2000, 1000)), att, (500, 0, 1500, 1000), None)
    assert max(Image.open(io.BytesIO(big)).size) == 512
