"""The ASEN++ network: a global branch and a zoomed-in local branch (SPEC section 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttributeAttention, AttributeCentering, AttributeTable
from .attributes import AttributeSpec
from .backbones import BACKBONES, build_backbone
from .config import BranchConfig, ModelConfig
from .preprocess import PreparedImage, normalize
from .roi import attention_boxes, crop_and_resize


class Branch(nn.Module):
    """Backbone trunk + attribute-aware attention. Names match the published release."""

    def __init__(self, attrnet: AttributeTable, cfg: BranchConfig, attr_dim: int,
                 center: bool = False):
        super().__init__()
        self.cfg = cfg
        self.attrnet = attrnet
        self.basenet = build_backbone(cfg.backbone)
        channels = BACKBONES[cfg.backbone].out_channels
        self.attnnet = AttributeAttention(channels, attr_dim, cfg.common_dim, cfg.reduction,
                                          cfg.out_dim)
        n_attrs = attrnet.attr_embedding.num_embeddings
        self.center: AttributeCentering | None = (
            AttributeCentering(n_attrs, cfg.out_dim) if center else None)

    def head(self, feat: torch.Tensor, attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb, attn = self.attnnet(feat, self.attrnet(attr))
        if self.center is not None:
            emb = self.center(emb, attr)
        return emb, attn

    def forward(self, x: torch.Tensor, attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.basenet(x), attr)


@dataclass
class ForwardOutput:
    embedding: torch.Tensor          # [B, D] unit-norm fused embedding
    g: torch.Tensor                  # [B, global out] (not normalised)
    attention: torch.Tensor          # [B, h, w] global attention maps
    l: torch.Tensor | None = None    # [B, local out] (not normalised)
    boxes: torch.Tensor | None = None  # [B, 4] RoI in model-input coordinates


class ASENPlusPlus(nn.Module):
    """The whole network: ``choices["global"]`` and, unless stage 1 only, ``choices["local"]``
    (:class:`Branch`), sharing one attribute table."""

    def __init__(self, config: ModelConfig, attributes: Sequence[AttributeSpec]):
        super().__init__()
        self.config = config
        self.attributes = list(attributes)
        table = AttributeTable(len(self.attributes), config.attr_dim)
        center = config.center_embeddings
        branches = {"global": Branch(table, config.global_branch, config.attr_dim, center)}
        if config.local_branch is not None:
            branches["local"] = Branch(table, config.local_branch, config.attr_dim, center)
        self.choices = nn.ModuleDict(branches)

    @property
    def has_local(self) -> bool:
        return "local" in self.choices

    def branch(self, name: str) -> Branch:
        """The ``global`` or the ``local`` branch."""
        branch = self.choices[name]
        if not isinstance(branch, Branch):
            raise TypeError(f"choices[{name!r}] is a {type(branch).__name__}, not a Branch")
        return branch

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    # -- pieces, so callers can share the trunk across attributes -------------------------
    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.branch("global").basenet(pixels)

    def _attr(self, attr: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(attr) if self.config.attribute_agnostic else attr

    def global_head(self, feat: torch.Tensor,
                    attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [B, out] and attention maps [B, h, w] of the global branch."""
        return self.branch("global").head(feat, self._attr(attr))

    def local_crops(self, attention: torch.Tensor, images: Sequence[PreparedImage],
                    image_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes [B,4] (model-input coordinates) and normalised local crops [B,3,s,s].

        Row i uses ``images[image_index[i]]``; crops come from that image's source pixels.
        """
        lcfg = self.config.local_branch
        if lcfg is None:
            raise ValueError(f"model config {self.config.name!r} has no local branch")
        gsize = self.config.global_branch.input_size
        boxes = attention_boxes(attention.detach(), gsize, self.config.threshold)
        crops = torch.empty(len(boxes), 3, lcfg.input_size, lcfg.input_size,
                            device=attention.device)
        host_boxes = boxes.cpu().tolist()        # one device-to-host copy for every row
        rows_by_image: dict[int, list[int]] = {}
        for row, img in enumerate(image_index.tolist()):
            rows_by_image.setdefault(img, []).append(row)
        for img, rows in rows_by_image.items():
            prep = images[img]
            src_boxes = torch.tensor(
                [prep.geometry.to_original(tuple(host_boxes[r])) for r in rows]
            ) * prep.source_scale
            # a plain copy: the source is not in pinned memory, so non_blocking would not be
            source = prep.source.to(attention.device)
            crops[rows] = crop_and_resize(source, src_boxes, lcfg.input_size)
        return boxes, normalize(crops)

    def local_embed(self, crops: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        emb, _ = self.branch("local")(crops, self._attr(attr))
        return emb

    def fuse(self, g: torch.Tensor, l: torch.Tensor | None) -> torch.Tensor:
        g = F.normalize(g.float(), dim=1)
        if l is None:
            return g
        b = self.config.beta
        return torch.cat([math.sqrt(b) * g, math.sqrt(1 - b) * F.normalize(l.float(), dim=1)],
                         dim=1)

    # -- whole forward ---------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor | None, attr: torch.Tensor,
                images: Sequence[PreparedImage] | None = None,
                image_index: torch.Tensor | None = None, use_local: bool = True,
                features: torch.Tensor | None = None) -> ForwardOutput:
        """``pixels`` [N,3,S,S] of ``images``; row i of ``attr`` is for image ``image_index[i]``
        (default: one row per image). ``features``: the global trunk's output for the images
        when the caller already has it (a frozen trunk's cache); ``pixels`` may then be None."""
        if features is None:
            if pixels is None:
                raise ValueError("give the pixels or the trunk's features")
            features = self.trunk(pixels)
        feat = features
        if image_index is None:
            image_index = torch.arange(len(feat), device=attr.device)
        else:
            feat = feat[image_index.to(feat.device)]
        g, attn = self.global_head(feat, attr)
        if not (use_local and self.has_local):
            return ForwardOutput(self.fuse(g, None), g, attn)
        if images is None:
            raise ValueError("the local branch needs the prepared images (their source pixels)")
        boxes, crops = self.local_crops(attn, images, image_index)
        l = self.local_embed(crops.contiguous(memory_format=torch.channels_last), attr)
        return ForwardOutput(self.fuse(g, l), g, attn, l, boxes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
