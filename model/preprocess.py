"""Image preprocessing: the global input tensor and the source image for the zoom-in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .roi import CropGeometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PreparedImage:
    """One image ready for the network.

    ``pixels``: normalised float [3, S, S] global input.
    ``source``: uint8 [3, h, w], the original image (shrunk only when its short side exceeds
    ``source_max``), from which the local branch crops its region of interest.
    ``geometry``: original image -> model input; ``source_scale``: source px per original px.
    """

    pixels: torch.Tensor
    source: torch.Tensor
    geometry: CropGeometry
    source_scale: float


# Preprocessing runs on decode threads. It uses numpy only and wraps the result with
# torch.from_numpy: a torch operation on a large tensor would start an OpenMP team on each
# such thread, and teams of several threads compete for the cores the model's thread needs.
_MEAN_255 = (np.asarray(IMAGENET_MEAN, dtype=np.float32) * np.float32(255.0)).reshape(3, 1, 1)
_STD_255 = (np.asarray(IMAGENET_STD, dtype=np.float32) * np.float32(255.0)).reshape(3, 1, 1)


def _chw_uint8(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))


def to_tensor_uint8(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [3, H, W] (numpy work only, see above)."""
    return torch.from_numpy(_chw_uint8(img))


def normalized_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> ImageNet-normalised float32 [3, H, W], equal to ``normalize`` of its uint8
    tensor (the same float32 operations), computed with numpy only."""
    return torch.from_numpy((_chw_uint8(img).astype(np.float32) - _MEAN_255) / _STD_255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or 0..255 float [..., 3, H, W] -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1) * 255.0
    return (x.float() - mean) / std


class Preprocessor:
    """Turns PIL images into :class:`PreparedImage` (picklable: usable in worker processes)."""

    def __init__(self, input_size: int, source_max: int | None = None):
        self.input_size = input_size
        self.source_max = source_max if source_max is not None else 4 * input_size

    def __call__(self, img: Image.Image) -> PreparedImage:
        img = img.convert("RGB")
        geom = CropGeometry(img.width, img.height, self.input_size)
        crop = geom.crop_box()
        glob = img.resize((self.input_size, self.input_size), Image.Resampling.BILINEAR, box=crop)
        source, scale = img, 1.0
        short = min(img.width, img.height)
        if short > self.source_max:
            scale = self.source_max / short
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            source = img.resize(size, Image.Resampling.BILINEAR)
        return PreparedImage(normalized_tensor(glob), to_tensor_uint8(source), geom, scale)
