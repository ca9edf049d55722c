"""ASEN++: attribute-specific embeddings for fine-grained fashion retrieval."""

from .attributes import BUILTIN_ATTRIBUTES, AttributeSpec, resolve_attributes
from .checkpoint import build_model, load_network, save_checkpoint
from .config import CONFIGS, BranchConfig, ModelConfig, get_config
from .embedder import Embedder, Explanation, load_model
from .errors import CheckpointError, ImageError, UnknownAttributeError
from .network import ASENPlusPlus, count_parameters

__version__ = "0.1.0"

__all__ = [
    "ASENPlusPlus", "AttributeSpec", "BUILTIN_ATTRIBUTES", "BranchConfig", "CONFIGS",
    "CheckpointError", "Embedder", "Explanation", "ImageError", "ModelConfig",
    "UnknownAttributeError", "build_model", "count_parameters", "get_config", "load_model",
    "load_network", "resolve_attributes", "save_checkpoint", "__version__",
]
