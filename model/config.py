"""Model configurations as data: the paper configuration and lighter ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
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


def get_config(name_or_config: str | ModelConfig | dict) -> ModelConfig:
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return ModelConfig.from_dict(name_or_config)
    if name_or_config not in CONFIGS:
        raise ValueError(f"unknown model config {name_or_config!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name_or_config]
