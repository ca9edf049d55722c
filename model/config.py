"""Configurations as data: the network's (`ModelConfig`, the paper configuration and lighter
ones) and the training recipe's (`TrainConfig`, run by `model.training.train`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BranchConfig:
    """One branch: a backbone trunk followed by attribute-aware attention."""

    backbone: str          # key of model.backbones.BACKBONES
    input_size: int        # square input side in pixels
    common_dim: int        # ASA common space
    reduction: int = 2     # ACA reduction rate
    out_dim: int = 1024    # branch embedding size


@dataclass(frozen=True)
class ModelConfig:
    name: str
    global_branch: BranchConfig
    local_branch: BranchConfig | None
    attr_dim: int = 512
    beta: float = 0.6        # weight of the global part in the fused similarity
    threshold: float = 0.1   # binarisation threshold of the attention map for the RoI
    attribute_agnostic: bool = False  # baseline: one embedding for every attribute
    # Centre each branch's embedding per attribute (model.attention.AttributeCentering): not
    # in the paper; keeps the hard attributes from collapsing while the attention searches.
    center_embeddings: bool = False

    @property
    def embedding_dim(self) -> int:
        g = self.global_branch.out_dim
        return g + self.local_branch.out_dim if self.local_branch else g

    def global_only(self) -> ModelConfig:
        """The stage-1 variant of this configuration."""
        return replace(self, local_branch=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        data["global_branch"] = BranchConfig(**data["global_branch"])
        if data.get("local_branch") is not None:
            data["local_branch"] = BranchConfig(**data["local_branch"])
        return cls(**data)


CONFIGS: dict[str, ModelConfig] = {
    # SPEC section 2: 20,984,064 parameters with 8 attributes.
    "paper": ModelConfig(
        name="paper",
        global_branch=BranchConfig("resnet50", 224, 512),
        local_branch=BranchConfig("resnet34", 112, 256),
    ),
    # CPU-friendly, the demo checkpoint: ImageNet MobileNetV2 trunks (weights from a local
    # file), the global one at output stride 8 (28 x 28 attention at 224 px) so the attention
    # can point at small details; per-attribute centring (docs/RESULTS.md, ablation).
    "cpu": ModelConfig(
        name="cpu",
        global_branch=BranchConfig("mobilenet_v2_os8", 224, 256, out_dim=512),
        local_branch=BranchConfig("mobilenet_v2", 112, 128, out_dim=512),
        attr_dim=128,
        center_embeddings=True,
    ),
    # Small: three convolutions per trunk, trained from scratch (CPU experiments).
    "small": ModelConfig(
        name="small",
        global_branch=BranchConfig("small", 128, 128, out_dim=256),
        local_branch=BranchConfig("small", 64, 128, out_dim=256),
        attr_dim=64,
    ),
    # Tiny: a few convolutions, for tests.
    "tiny": ModelConfig(
        name="tiny",
        global_branch=BranchConfig("tiny", 64, 32, out_dim=64),
        local_branch=BranchConfig("tiny", 32, 32, out_dim=64),
        attr_dim=32,
    ),
}


def get_config(name_or_config: str | ModelConfig | dict[str, Any]) -> ModelConfig:
    """A named configuration, a configuration, or one as a dict (:meth:`ModelConfig.to_dict`)."""
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return ModelConfig.from_dict(name_or_config)
    if name_or_config not in CONFIGS:
        raise ValueError(f"unknown model config {name_or_config!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name_or_config]


# -- training ---------------------------------------------------------------------------

@dataclass(frozen=True)
class StageConfig:
    epochs: int
    lr: float                  # stage 1: all; stage 2: the local branch
    step: int                  # StepLR step size (epochs)
    gamma: float
    lr_global: float = 0.0     # stage 2 only: the global branch (and the attribute table)


@dataclass(frozen=True)
class TrainConfig:
    model: str
    stage1: StageConfig
    stage2: StageConfig
    triplets_per_epoch: int = 100_000
    batch_size: int = 16
    margin: float = 0.2
    local_weight: float = 0.1
    align_weight: float = 0.1
    # a torchvision weights file, or "imagenet" (offline), for every trunk; or one per trunk:
    # {"global": FILE, "local": FILE} (a trunk left out keeps its random initialisation)
    backbone_weights: str | dict[str, str] | None = None
    freeze_backbones: bool = False       # train attention heads only; trunk outputs are cached
    # "uniform" (SPEC section 4) or "loss": attributes picked in proportion to their running
    # triplet loss, so the ones the model has not learnt yet get more of each epoch.
    attribute_sampling: str = "uniform"
    # Random restarts of stage 1: this many independently initialised attention heads each
    # train the first ``start_epochs`` epochs on triplets of their own, and the one whose
    # weakest attribute has the best validation MAP goes on (whether the attention finds a
    # small detail depends on the draw of the first epochs' triplets; docs/RESULTS.md).
    # 1: the paper's single start.
    starts: int = 1
    start_epochs: int = 1
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields to replace
    valid_limit: int | None = None   # queries/candidates per attribute for validation MAP
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attribute_sampling not in ("uniform", "loss"):
            raise ValueError(f"attribute_sampling must be 'uniform' or 'loss', "
                             f"not {self.attribute_sampling!r}")
        if self.triplets_per_epoch < 1 or self.batch_size < 1:
            raise ValueError(f"triplets_per_epoch and batch_size must be at least 1, not "
                             f"{self.triplets_per_epoch} and {self.batch_size}")
        if self.stage2.epochs < 0:
            raise ValueError(f"stage2.epochs must be 0 or more, not {self.stage2.epochs}")
        if isinstance(self.backbone_weights, dict) and not set(self.backbone_weights) <= {
                "global", "local"}:
            raise ValueError(f"backbone_weights: keys must be 'global' and/or 'local', not "
                             f"{sorted(self.backbone_weights)}")
        if self.starts < 1:
            raise ValueError(f"starts must be at least 1, not {self.starts}")
        if not 1 <= self.start_epochs <= self.stage1.epochs:
            raise ValueError(f"start_epochs must be 1 to stage1.epochs ({self.stage1.epochs}), "
                             f"not {self.start_epochs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["stage1"] = StageConfig(**data["stage1"])
        data["stage2"] = StageConfig(**data["stage2"])
        return cls(**data)


TRAIN_CONFIGS: dict[str, TrainConfig] = {
    # SPEC section 4, as published.
    "paper": TrainConfig(
        model="paper",
        stage1=StageConfig(epochs=50, lr=1e-4, step=3, gamma=0.9),
        stage2=StageConfig(epochs=20, lr=1e-4, step=1, gamma=0.9, lr_global=1e-5),
    ),
    # Frozen ImageNet MobileNetV2 trunks (offline weights), attention heads trained: the demo
    # checkpoint and docs/RESULTS.md. Minutes on two CPU cores.
    # Four random starts of two epochs each: the draw of the first triplets decides whether
    # the attention finds the button (docs/RESULTS.md).
    "cpu": TrainConfig(
        model="cpu",
        stage1=StageConfig(epochs=8, lr=1e-3, step=2, gamma=0.8),
        stage2=StageConfig(epochs=2, lr=1e-3, step=1, gamma=0.8, lr_global=1e-4),
        triplets_per_epoch=10_000,
        batch_size=32,
        backbone_weights="imagenet",
        freeze_backbones=True,
        attribute_sampling="loss",
        starts=4,
        start_epochs=2,
        valid_limit=100,
    ),
    # A small network trained from scratch (every weight), for CPU experiments.
    "small": TrainConfig(
        model="small",
        stage1=StageConfig(epochs=4, lr=1e-3, step=2, gamma=0.8),
        stage2=StageConfig(epochs=2, lr=1e-3, step=1, gamma=0.8, lr_global=1e-4),
        triplets_per_epoch=2_000,
        batch_size=32,
        valid_limit=100,
    ),
    "tiny": TrainConfig(
        model="tiny",
        stage1=StageConfig(epochs=1, lr=1e-3, step=1, gamma=0.9),
        stage2=StageConfig(epochs=1, lr=1e-3, step=1, gamma=0.9, lr_global=1e-4),
        triplets_per_epoch=64,
        batch_size=16,
        valid_limit=10,
    ),
}


def get_train_config(name_or_file: str) -> TrainConfig:
    """A named config, or a JSON file: {"base": NAME, ...overrides} or a full config."""
    if name_or_file in TRAIN_CONFIGS:
        return TRAIN_CONFIGS[name_or_file]
    path = Path(name_or_file)
    if not path.is_file():
        raise ValueError(f"unknown config {name_or_file!r}: not one of "
                         f"{', '.join(TRAIN_CONFIGS)} and not a file")
    data = json.loads(path.read_text())
    base = TRAIN_CONFIGS[data.pop("base", "paper")].to_dict()
    for key in ("stage1", "stage2"):
        base[key].update(data.pop(key, {}))
    base.update(data)
    return TrainConfig.from_dict(base)
