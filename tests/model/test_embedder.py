"""The embedder's device paths (model/embedder.py), pinned on the CPU: one host copy of the
attention boxes per pass, IEEE fp32 (no TF32) on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model import build_model
from model.embedder import Embedder, use_ieee_fp32


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]


def test_local_crops_copy_boxes_to_the_host_once(monkeypatch):
    """Device-to-host reads (``tolist``) per pass do not grow with the rows of the pass."""
    torch.manual_seed(0)
    attrs = [(f"a{i}", 2) for i in range(6)]
    emb = Embedder(build_model("tiny", attrs), device="cpu", batch_size=64)
    prepared = emb.prepare(_images(3))
    calls = []
    original = torch.Tensor.tolist

    def counting(self):
        calls.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    emb.embed_all_prepared(prepared, [0])             # 3 rows
    few = len(calls)
    calls.clear()
    emb.embed_all_prepared(prepared)                  # 18 rows, still one pass
    assert len(calls) == few <= 2


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fp32_on_cuda_turns_tf32_off(tf32_flags):
    assert not use_ieee_fp32(torch.device("cpu"), "fp32")
    assert not use_ieee_fp32(torch.device("cuda"), "bf16")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert use_ieee_fp32(torch.device("cuda"), "fp32")
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32
