"""Fold BatchNorm into the preceding convolution for inference (exact up to rounding)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fuse every eval-mode Conv2d -> BatchNorm2d pair in place; returns ``module``.

    Pairs are found in ``nn.Sequential`` containers (MobileNetV2, downsample paths, small
    trunks) and as sibling attributes ``convN`` / ``bnN`` (torchvision ResNet blocks). The
    BatchNorm becomes an ``nn.Identity``. Only for inference: the module must not train again.
    """
    for child in module.children():
        fuse_conv_bn(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    for name, bn in list(module.named_children()):
        if isinstance(bn, nn.BatchNorm2d) and name.startswith("bn"):
            sibling = getattr(module, "conv" + name[2:], None)
            if isinstance(sibling, nn.Conv2d):
                setattr(module, "conv" + name[2:], fuse_conv_bn_eval(sibling, bn))
                setattr(module, name, nn.Identity())
    return module
