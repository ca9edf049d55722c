"""ASEN++: attribute-specific embeddings for fine-grained fashion retrieval.

The names below load on first use, so that the standard-library modules of this package
(`model.osutil`, `model.errors`, `model.attributes`, `model.imageio`) import without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from model.version import __version__

if TYPE_CHECKING:
    from model.attributes import BUILTIN_ATTRIBUTES, AttributeSpec, resolve_attributes
    from model.checkpoint import build_model, load_network, save_checkpoint
    from model.config import CONFIGS, BranchConfig, ModelConfig, get_config
    from model.embedder import Embedder, Explanation, load_model
    from model.errors import CheckpointError, ImageError, UnknownAttributeError
    from model.network import ASENPlusPlus, count_parameters

_HOMES = {
    "model.attributes": ["BUILTIN_ATTRIBUTES", "AttributeSpec", "resolve_attributes"],
    "model.checkpoint": ["build_model", "load_network", "save_checkpoint"],
    "model.config": ["CONFIGS", "BranchConfig", "ModelConfig", "get_config"],
    "model.embedder": ["Embedder", "Explanation", "load_model"],
    "model.errors": ["CheckpointError", "ImageError", "UnknownAttributeError"],
    "model.network": ["ASENPlusPlus", "count_parameters"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ASENPlusPlus", "AttributeSpec", "BUILTIN_ATTRIBUTES", "BranchConfig", "CONFIGS",
    "CheckpointError", "Embedder", "Explanation", "ImageError", "ModelConfig",
    "UnknownAttributeError", "build_model", "count_parameters", "get_config", "load_model",
    "load_network", "resolve_attributes", "save_checkpoint", "__version__",
]


def __getattr__(name: str) -> object:
    if name not in _HOME_OF:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name]), name)
    globals()[name] = value
    return value
