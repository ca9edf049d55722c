"""A stand-in for the authors' released checkpoints: random weights in their file format."""

from __future__ import annotations

from pathlib import Path

from model.attributes import AttributesLike


def published_checkpoint(path: Path, attributes: AttributesLike = "FashionAI",
                         seed: int = 0) -> Path:
    """A random stage-1 (global branch only) paper-config network saved as the authors' code
    saves it, ``{"epoch", "model", "mAP"}`` with their key names (about 48 MB); ``path``."""
    import torch

    from model.attributes import resolve_attributes
    from model.checkpoint import published_state_dict
    from model.config import CONFIGS
    from model.network import ASENPlusPlus

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ASENPlusPlus(CONFIGS["paper"].global_only(), resolve_attributes(attributes))
    torch.save({"epoch": 1, "model": published_state_dict(net), "mAP": 0.5}, path)
    return path
