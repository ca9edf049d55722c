"""Attention boxes (model/roi.py): on the input's device, and the whole frame for an
attention map with no foreground."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from model.roi import attention_boxes


def test_attention_boxes_stay_on_a_cuda_device():
    """Fake CUDA tensors check device propagation like CUDA does (CPU constants that are not
    0-dimensional cannot be written into them), without a GPU."""
    with FakeTensorMode():
        attn = torch.rand(3, 14, 14, device="cuda")
        boxes = attention_boxes(attn, 224, 0.1)
        assert boxes.device.type == "cuda" and tuple(boxes.shape) == (3, 4)


def test_empty_foreground_still_gives_the_whole_frame():
    attn = torch.full((2, 14, 14), 1 / 196)
    attn[1, 3, 3] = 1.0
    boxes = attention_boxes(attn, 224, 0.1)
    assert boxes[0].tolist() == [0, 0, 224, 224]
    assert boxes[1].tolist() != [0, 0, 224, 224]
