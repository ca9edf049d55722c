"""Geometry of the model input and the zoom-in region of interest (SPEC section 2).

Coordinates are continuous pixel coordinates: a box (x0, y0, x1, y1) covers x0 <= x < x1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropGeometry:
    """How an original image of ``width`` x ``height`` maps onto the square model input.

    Resize so the short side is ``size`` (long side truncated like torchvision's Resize),
    then take the centre ``size`` x ``size`` crop (offsets rounded like CenterCrop).
    """

    width: int
    height: int
    size: int

    @property
    def scale(self) -> float:
        """Resized pixels per original pixel, per axis (x, y)."""
        return self.size / min(self.width, self.height)

    @property
    def resized(self) -> tuple[int, int]:
        short, long_ = sorted((self.width, self.height))
        new_long = int(self.size * long_ / short)
        return (self.size, new_long) if self.width <= self.height else (new_long, self.size)

    @property
    def offset(self) -> tuple[int, int]:
        rw, rh = self.resized
        return int(round((rw - self.size) / 2.0)), int(round((rh - self.size) / 2.0))

    def _scales(self) -> tuple[float, float]:
        rw, rh = self.resized
        return rw / self.width, rh / self.height

    def to_original(self, box: Box) -> Box:
        """Map a box in model-input coordinates back onto the original image."""
        sx, sy = self._scales()
        left, top = self.offset
        x0, y0, x1, y1 = box
        return ((x0 + left) / sx, (y0 + top) / sy, (x1 + left) / sx, (y1 + top) / sy)

    def to_input(self, box: Box) -> Box:
        """Map a box on the original image into model-input coordinates."""
        sx, sy = self._scales()
        left, top = self.offset
        x0, y0, x1, y1 = box
        return (x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top)

    def crop_box(self) -> Box:
        """The region of the original image that the model input shows."""
        return self.to_original((0.0, 0.0, float(self.size), float(self.size)))


def attention_boxes(attn: torch.Tensor, size: int, threshold: float) -> torch.Tensor:
    """RoI boxes [B, 4] in model-input coordinates from attention maps [B, h, w].

    Upsample bilinearly to size x size, min-max normalise, binarise at ``threshold``, take
    the foreground's bounding box, square it around its centre with the longer edge as side,
    and shift it inside the frame. An empty foreground gives the whole frame.
    """
    up = F.interpolate(attn[:, None].float(), size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    norm = (up - lo) / (hi - lo).clamp_min(1e-12)
    mask = norm >= threshold
    mask = mask & (hi - lo > 1e-12)            # a flat map has no foreground
    cols, rows = mask.any(dim=1), mask.any(dim=2)
    empty = ~cols.any(dim=1)

    def extent(any_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = any_.float().argmax(dim=1)
        last = size - 1 - any_.flip(1).float().argmax(dim=1)
        return first.float(), last.float() + 1.0

    x0, x1 = extent(cols)
    y0, y1 = extent(rows)
    side = torch.maximum(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    nx0 = (cx - side / 2).clamp(min=0.0)
    ny0 = (cy - side / 2).clamp(min=0.0)
    nx0 = torch.minimum(nx0, size - side)
    ny0 = torch.minimum(ny0, size - side)
    boxes = torch.stack([nx0, ny0, nx0 + side, ny0 + side], dim=1)
    # the whole frame, made on the boxes' device (a CPU constant cannot be written into a
    # CUDA tensor); torch.where also avoids the host sync of boolean-mask assignment
    frame = boxes.new_tensor([0.0, 0.0, float(size), float(size)])
    return torch.where(empty[:, None], frame, boxes)


def crop_and_resize(source: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop boxes [K, 4] (source pixel coordinates) from one uint8/float image [3, H, W].

    Bilinear sampling with adaptive averaging (antialiased when shrinking); returns float
    crops [K, 3, out_size, out_size] in the 0..255 range of the source.
    """
    src = source[None].float()
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes.float()], dim=1).to(src.device)
    return roi_align(src, rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)
