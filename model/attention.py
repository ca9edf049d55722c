"""Attribute-aware spatial (ASA) and channel (ACA) attention, plus the attribute table.

Module and parameter names follow the published release, so its state dicts load by key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AttributeTable(nn.Module):
    """The attribute embedding table shared by both branches."""

    def __init__(self, n_attrs: int, dim: int):
        super().__init__()
        self.attr_embedding = nn.Embedding(n_attrs, dim)

    def forward(self, attr: torch.Tensor) -> torch.Tensor:
        return self.attr_embedding(attr)


class AttributeCentering(nn.Module):
    """Subtract each attribute's mean embedding, like BatchNorm's centring but per attribute.

    Training: every row is centred on the mean of the batch's rows of its attribute (the
    gradient flows through that mean) and a running mean is updated; evaluation subtracts the
    running mean. Why: with a margin loss on cosine similarities, an attribute whose evidence
    the attention has not found yet is served most cheaply by mapping every image to one
    vector (the loss sits at the margin and its gradients vanish); after centring that
    constant is gone, so the only way to lower the loss is to find the attribute.
    """

    running_mean: torch.Tensor      # [n_attrs, dim] float32 buffer

    def __init__(self, n_attrs: int, dim: int, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(n_attrs, dim))

    def forward(self, x: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x - self.running_mean[attr].to(x.dtype)
        n_attrs = self.running_mean.shape[0]
        sums = x.new_zeros(n_attrs, x.shape[1]).index_add(0, attr, x)
        counts = torch.bincount(attr, minlength=n_attrs).to(x.dtype)
        means = sums / counts.clamp_min(1)[:, None]
        with torch.no_grad():
            seen = counts > 0
            delta = means.detach()[seen].float() - self.running_mean[seen]
            self.running_mean[seen] += self.momentum * delta
        return x - means[attr]


class AttributeAttention(nn.Module):
    """ASA then ACA then a final linear layer: features [B,C,H,W] -> embedding [B,out]."""

    def __init__(self, in_channels: int, attr_dim: int, common_dim: int, reduction: int,
                 out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, common_dim, kernel_size=1)
        self.attr_transform1 = nn.Linear(attr_dim, common_dim)
        self.attr_transform2 = nn.Linear(attr_dim, attr_dim)
        self.fc1 = nn.Linear(in_channels + attr_dim, in_channels // reduction)
        self.fc2 = nn.Linear(in_channels // reduction, in_channels)
        self.feature_fc = nn.Linear(in_channels, out_dim)

    def spatial_attention(self, feat: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        """Softmax attention over locations: [B,H,W], each map sums to 1."""
        b, _, h, w = feat.shape
        img = torch.tanh(self.conv(feat)).flatten(2)               # B, common, HW
        key = torch.tanh(self.attr_transform1(attr))               # B, common
        scores = torch.einsum("bc,bcn->bn", key, img) / math.sqrt(img.shape[1])
        return F.softmax(scores.float(), dim=1).to(feat.dtype).view(b, h, w)

    def channel_attention(self, pooled: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.attr_transform2(attr))
        m = F.relu(self.fc1(torch.cat([pooled, a], dim=1)))
        return torch.sigmoid(self.fc2(m))

    def forward(self, feat: torch.Tensor, attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.spatial_attention(feat, attr)
        pooled = torch.einsum("bcn,bn->bc", feat.flatten(2), attn.flatten(1))
        pooled = pooled * self.channel_attention(pooled, attr)
        return self.feature_fc(pooled), attn
