"""Fine-tuning: a run that starts from an existing checkpoint (``python -m model.train --init``).

The network holds two kinds of weights: shared ones (the trunks, each branch's attention and
final layers), and one row per attribute in the attribute table (``attrnet.attr_embedding``)
and in each branch's centring (``center.running_mean``). Nothing is held per value. So a run
on data with the checkpoint's attributes plus new ones starts from the checkpoint's shared
weights and from its rows for every attribute whose *name* matches; a new attribute keeps
the fresh row the run initialised. A matching name whose value count differs keeps its row
too (the row says where to look and what to look for, not which values exist) and is
reported as revalued. The run's architecture must be the checkpoint's; only a missing local
branch may differ (a stage-1 checkpoint starts a full run's global branch, the local branch
starts fresh; a full checkpoint starts a global-only run's global branch).
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import FORMAT, InitProvenance, load_network, read_checkpoint_file
from model.config import ModelConfig
from model.errors import CheckpointError
from model.network import ASENPlusPlus
from model.osutil import sha256_file

#: state-dict keys (suffixes) of the tensors with one row per attribute
PER_ATTRIBUTE = ("attrnet.attr_embedding.weight", "center.running_mean")


def init_architecture(path: str | Path) -> ModelConfig:
    """The architecture of the project checkpoint ``path`` (clear errors for other files)."""
    data = read_checkpoint_file(path)
    if data.get("format") != FORMAT or "config" not in data:
        raise CheckpointError(f"{path}: --init needs a checkpoint of this project (it names its "
                              "attributes); save a published one as one first (README, "
                              "'Published checkpoints and datasets')")
    try:
        return ModelConfig.from_dict(data["config"])
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from exc


def architecture_differences(run: ModelConfig, init: ModelConfig) -> list[str]:
    """The fields (the name aside) in which ``run`` differs from ``init``; the local branch
    is compared only when both have one."""
    if run.local_branch is None or init.local_branch is None:
        run, init = run.global_only(), init.global_only()
    a, b = run.to_dict(), init.to_dict()
    return [k for k in a if k != "name" and a[k] != b[k]]


def init_from(net: ASENPlusPlus, path: str | Path) -> InitProvenance:
    """Copy the checkpoint ``path``'s weights into the freshly built ``net``: every shared
    tensor, and the per-attribute rows of the attributes whose names match. Returns what was
    kept and what is new."""
    diff = architecture_differences(net.config, init_architecture(path))
    if diff:
        raise CheckpointError(f"{path}: its architecture differs from the run's in "
                              f"{', '.join(diff)}")
    init = load_network(path)
    rows = {a.name: i for i, a in enumerate(init.attributes)}
    pairs = [(j, rows[a.name]) for j, a in enumerate(net.attributes) if a.name in rows]
    own, state = net.state_dict(), {}
    for key, value in init.state_dict().items():
        if key not in own:          # a local branch the run does not have
            continue
        if key.endswith(PER_ATTRIBUTE):
            merged = own[key].detach().cpu().clone()
            for j, i in pairs:
                merged[j] = value[i]
            value = merged
        elif value.shape != own[key].shape:
            raise CheckpointError(f"{path}: shape mismatch for {key!r}: checkpoint "
                                  f"{tuple(value.shape)}, run {tuple(own[key].shape)}")
        state[key] = value
    with torch.no_grad():
        net.load_state_dict(state, strict=False)
    names = [a.name for a in net.attributes]
    old = {a.name: a.n_values for a in init.attributes}
    return InitProvenance(
        path=str(path), sha256=sha256_file(path),
        attributes_kept=tuple(n for n in names if n in old),
        attributes_new=tuple(n for n in names if n not in old),
        attributes_revalued=tuple(a.name for a in net.attributes
                                  if a.name in old and a.n_values != old[a.name]),
        attributes_dropped=tuple(n for n in old if n not in names))


__all__ = ["PER_ATTRIBUTE", "architecture_differences", "init_architecture", "init_from"]
