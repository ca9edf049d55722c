"""Inference: PIL images + attributes in, unit-norm float32 embeddings out."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .attributes import AttributesLike, AttributeSpec
from .checkpoint import load_network_and_values
from .config import ModelConfig
from .errors import UnknownAttributeError
from .fusion import fuse_conv_bn
from .memory import keep_freed_memory
from .network import ASENPlusPlus, ForwardOutput
from .osutil import sha256_file
from .precision import PRECISION_NAMES, PrecisionChoice, explicit, probe_images, resolve_precision
from .preprocess import PreparedImage, Preprocessor

if TYPE_CHECKING:
    from .prototypes import Prototypes
    from .tagging import Calibration

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Explanation:
    """What the network looked at for one image and attribute (:meth:`Embedder.explain`)."""

    attention: np.ndarray                     # [h, w] float32, sums to 1
    box: tuple[int, int, int, int] | None     # RoI on the original image (x0, y0, x1, y1)
    embedding: np.ndarray                     # [dim]
    image_size: tuple[int, int]               # original (width, height)
    input_box: tuple[float, float, float, float] | None = None  # RoI in model-input pixels
    crop_box: tuple[float, float, float, float] | None = None   # input region on the original


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; by default CUDA when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder:
    """Wraps a network for inference: batching, device, precision, channels-last."""

    def __init__(self, net: ASENPlusPlus, device: str | torch.device | None = None,
                 precision: str = "fp32", batch_size: int | None = None,
                 checkpoint: str | None = None, fuse: bool = False,
                 checkpoint_sha256: str | None = None):
        """``fuse``: fold BatchNorm into convolutions (faster; changes ``net`` in place, so
        only for a network that will not train again, as :func:`load_model` does).
        ``checkpoint`` / ``checkpoint_sha256``: the file the weights came from and the hex
        sha256 of its bytes (what an index records of its model), None for a network built
        in memory. ``precision="auto"``: bf16 where the hardware runs it natively and a
        start-up check passes, else fp32 (:mod:`model.precision`); :attr:`precision` is the
        one chosen, :attr:`precision_choice` says why."""
        if precision not in PRECISION_NAMES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_NAMES)}")
        self.device: torch.device = pick_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 is only offered on CUDA; use bf16 on the CPU")
        self.precision = "fp32" if precision == "auto" else precision
        self.precision_choice: PrecisionChoice = explicit(self.precision)
        # rows (image x attribute pairs) per forward pass: small batches run fastest on a CPU
        # (measured in docs/BENCHMARKS.md), a GPU wants large ones
        self.batch_size = batch_size or (128 if self.device.type == "cuda" else 16)
        self.checkpoint = checkpoint
        self.checkpoint_sha256 = checkpoint_sha256
        # the value prototypes and tag calibration the checkpoint keeps (load_model sets them)
        self.prototypes: Prototypes | None = None
        self.calibration: Calibration | None = None
        net = net.eval()
        if fuse:
            fuse_conv_bn(net)
        self.net = net.to(self.device).to(memory_format=torch.channels_last)
        # PIL image -> PreparedImage; picklable, so worker processes can run it
        self.preprocess: Preprocessor = Preprocessor(net.config.global_branch.input_size)
        self._index = {a.name: i for i, a in enumerate(net.attributes)}
        if precision == "auto":
            self.precision_choice = resolve_precision("auto", self.device, self._cosine_to_fp32)
            self.precision = self.precision_choice.chosen

    def _cosine_to_fp32(self, precision: str) -> float:
        """The start-up check of ``auto``: minimum cosine of :func:`model.precision.
        probe_images` embedded for every attribute in ``precision`` to fp32."""
        prepared = self.prepare(probe_images())
        self.precision = "fp32"
        reference = self.embed_all_prepared(prepared)
        self.precision = precision
        try:
            low = self.embed_all_prepared(prepared)
        finally:
            self.precision = "fp32"
        return float((reference * low).sum(-1).min())

    # -- metadata --------------------------------------------------------------------------
    @property
    def attributes(self) -> list[AttributeSpec]:
        return list(self.net.attributes)

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.net.attributes]

    @property
    def dim(self) -> int:
        return self.net.embedding_dim

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    def attribute_index(self, attribute: str | int) -> int:
        """The index of an attribute given by name or index; UnknownAttributeError if none."""
        if isinstance(attribute, (int, np.integer)) and not isinstance(attribute, bool):
            if 0 <= int(attribute) < len(self._index):
                return int(attribute)
        elif isinstance(attribute, str) and attribute in self._index:
            return self._index[attribute]
        raise UnknownAttributeError(attribute, self.attribute_names)

    # -- core ------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def prepare(self, images: Sequence[Image.Image]) -> list[PreparedImage]:
        """:attr:`preprocess` of each image."""
        return [self.preprocess(img) for img in images]

    def _pixels(self, prepared: Sequence[PreparedImage]) -> torch.Tensor:
        pixels = [p.pixels for p in prepared]
        if self.device.type != "cuda":
            x = torch.stack(pixels)
        else:  # stacked into page-locked memory: only then is the copy really asynchronous
            x = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype,
                            pin_memory=True)
            x = torch.stack(pixels, out=x).to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward_prepared(self, prepared: Sequence[PreparedImage], attr: Sequence[int],
                         image_index: Sequence[int] | None = None) -> ForwardOutput:
        """One network pass; row i is image ``image_index[i]`` for attribute ``attr[i]``."""
        attr_t = torch.as_tensor(list(attr), dtype=torch.long, device=self.device)
        idx_t = None if image_index is None else torch.as_tensor(
            list(image_index), dtype=torch.long, device=self.device)
        with self._autocast():
            return self.net(self._pixels(prepared), attr_t, prepared, idx_t)

    def embed_prepared(self, prepared: Sequence[PreparedImage],
                       attributes: Sequence[str | int]) -> np.ndarray:
        """Per-row attributes; the trunk runs once per row (the published evaluation's way)."""
        if len(prepared) != len(attributes):
            raise ValueError(f"{len(prepared)} images but {len(attributes)} attributes")
        attr = [self.attribute_index(a) for a in attributes]
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        for s in range(0, len(prepared), self.batch_size):
            end = s + self.batch_size
            res = self.forward_prepared(prepared[s:end], attr[s:end])
            out[s:end] = res.embedding.float().cpu().numpy()
        return out

    def embed_all_prepared(self, prepared: Sequence[PreparedImage],
                           attributes: Sequence[str | int] | None = None) -> np.ndarray:
        """Every image for every attribute, [N, A, dim]; each trunk runs once per image."""
        attr = [self.attribute_index(a) for a in (attributes if attributes is not None
                                                  else range(len(self._index)))]
        n_attr = len(attr)
        out = np.empty((len(prepared), n_attr, self.dim), dtype=np.float32)
        step = max(1, self.batch_size // max(1, n_attr))   # images per forward pass
        for s in range(0, len(prepared), step):
            chunk = prepared[s:s + step]
            rows_img = [i for i in range(len(chunk)) for _ in attr]
            rows_attr = attr * len(chunk)
            res = self.forward_prepared(chunk, rows_attr, rows_img)
            out[s:s + len(chunk)] = res.embedding.float().cpu().numpy().reshape(
                len(chunk), n_attr, self.dim)
        return out

    def embed_each_prepared(self, prepared: Sequence[PreparedImage],
                            attributes: Sequence[Sequence[str | int]]) -> list[np.ndarray]:
        """Image i for each attribute of ``attributes[i]``: a [len(attributes[i]), dim]
        array per image. Every image goes through the global trunk once, however many
        attributes it has; passes hold up to ``batch_size`` rows (an image with more
        attributes than that gets a pass of its own)."""
        if len(prepared) != len(attributes):
            raise ValueError(f"{len(prepared)} images but {len(attributes)} attribute lists")
        attr = [[self.attribute_index(a) for a in attrs] for attrs in attributes]
        out = [np.empty((len(a), self.dim), dtype=np.float32) for a in attr]
        start = 0
        while start < len(prepared):
            end, rows = start + 1, len(attr[start])
            while end < len(prepared) and rows + len(attr[end]) <= self.batch_size:
                rows += len(attr[end])
                end += 1
            with_rows = [i for i in range(start, end) if attr[i]]
            if with_rows:
                chunk = [prepared[i] for i in with_rows]
                rows_img = [j for j, i in enumerate(with_rows) for _ in attr[i]]
                rows_attr = [a for i in with_rows for a in attr[i]]
                res = self.forward_prepared(chunk, rows_attr, rows_img)
                emb = res.embedding.float().cpu().numpy()
                pos = 0
                for i in with_rows:
                    out[i][:] = emb[pos:pos + len(attr[i])]
                    pos += len(attr[i])
            start = end
        return out

    # -- public API (SPEC section 7) -------------------------------------------------------
    def embed(self, images: Sequence[Image.Image], attributes: Sequence[str | int]) -> np.ndarray:
        """[N, dim] float32 unit-norm rows: image i embedded for attribute i."""
        if len(images) != len(attributes):
            raise ValueError(f"{len(images)} images but {len(attributes)} attributes")
        for a in attributes:
            self.attribute_index(a)
        return self.embed_prepared(self.prepare(images), attributes)

    def embed_all(self, images: Sequence[Image.Image],
                  attributes: Sequence[str | int] | None = None) -> np.ndarray:
        """[N, A, dim]: every image for every (given) attribute, sharing each trunk pass."""
        return self.embed_all_prepared(self.prepare(images), attributes)

    def explain(self, image: Image.Image, attribute: str | int) -> Explanation:
        """Attention map and the RoI box the local branch used, for one image."""
        return self.explain_prepared(self.preprocess(image), attribute)

    def explain_prepared(self, prep: PreparedImage, attribute: str | int) -> Explanation:
        """:meth:`explain` of an image already preprocessed (e.g. on another thread)."""
        res = self.forward_prepared([prep], [self.attribute_index(attribute)])
        attn = res.attention[0].float().cpu().numpy().astype(np.float32)
        box: tuple[int, int, int, int] | None = None
        input_box: tuple[float, float, float, float] | None = None
        if res.boxes is not None:
            bx0, by0, bx1, by1 = (float(v) for v in res.boxes[0].tolist())
            input_box = (bx0, by0, bx1, by1)
            x0, y0, x1, y1 = prep.geometry.to_original(input_box)
            box = (int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        size = (int(prep.geometry.width), int(prep.geometry.height))
        return Explanation(attn, box, res.embedding[0].float().cpu().numpy(), size, input_box,
                           prep.geometry.crop_box())


def use_ieee_fp32(device: torch.device, precision: str) -> bool:
    """Turn TF32 off (process-wide) for fp32 inference on CUDA; whether it did.

    cuDNN convolutions default to TF32, which moves "fp32" CUDA embeddings about 1e-3 away
    from CPU ones. Inference processes (service, indexer, evaluation) load their model with
    :func:`load_model`, which calls this; training keeps torch's defaults.
    """
    if device.type != "cuda" or precision != "fp32":
        return False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return True


def load_model(path: str | Path, attributes: AttributesLike | None = None,
               device: str | torch.device | None = None, precision: str = "fp32",
               batch_size: int | None = None) -> Embedder:
    """Load a project or published checkpoint into a ready :class:`Embedder`.

    ``precision``: fp32, bf16, fp16 (CUDA only) or auto (resolved on the loaded model, see
    :class:`Embedder`; the service and the indexer default to it).
    fp32 on CUDA means IEEE fp32 (TF32 off, see :func:`use_ieee_fp32`). The process keeps
    freed heap memory for the next pass (:func:`model.memory.keep_freed_memory`).
    """
    keep_freed_memory()
    net, (prototypes, calibration) = load_network_and_values(path, attributes)
    emb = Embedder(net, device=device, precision=precision, batch_size=batch_size,
                   checkpoint=str(path), fuse=True, checkpoint_sha256=sha256_file(path))
    emb.prototypes, emb.calibration = prototypes, calibration
    use_ieee_fp32(emb.device, emb.precision)
    return emb
