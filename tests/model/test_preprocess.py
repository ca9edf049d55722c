"""Preprocessing (model/preprocess.py) computes with numpy on the decode threads: its global
input equals torch's normalisation of the same pixels, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.preprocess import Preprocessor, normalize, normalized_tensor, to_tensor_uint8


@pytest.mark.parametrize("size", [(224, 224), (51, 37), (300, 200)])
def test_numpy_normalisation_equals_torch_normalisation(size):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    want = normalize(to_tensor_uint8(img))
    got = normalized_tensor(img)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, want)


def test_prepared_image_layout():
    img = Image.new("RGB", (320, 240), (10, 200, 30))
    prepared = Preprocessor(224)(img)
    assert prepared.pixels.shape == (3, 224, 224) and prepared.pixels.dtype == torch.float32
    assert prepared.source.shape == (3, 240, 320) and prepared.source.dtype == torch.uint8
    assert torch.equal(prepared.source[:, 0, 0], torch.tensor([10, 200, 30], dtype=torch.uint8))
