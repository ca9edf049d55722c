"""Checkpoints: the project's self-describing format and the published release's format."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .attributes import AttributesLike, AttributeSpec, resolve_attributes
from .backbones import load_backbone_weights
from .config import CONFIGS, ModelConfig, get_config
from .errors import CheckpointError

if TYPE_CHECKING:
    from .prototypes import Prototypes
    from .tagging import Calibration
from .network import ASENPlusPlus
from .osutil import replace_atomically

FORMAT = "asen-retrieval"
FORMAT_VERSION = 1
PUBLISHED_PREFIX = "choices."


def build_model(config: str | ModelConfig | dict[str, Any], attributes: AttributesLike,
                backbone_weights: str | Path | dict[str, str | Path] | None = None,
                ) -> ASENPlusPlus:
    """Build a freshly initialised model.

    ``backbone_weights``: a torchvision-format ImageNet weights file for both branches, or
    ``{"global": path, "local": path}``.
    """
    net = ASENPlusPlus(get_config(config), resolve_attributes(attributes))
    if backbone_weights is not None:
        paths = backbone_weights if isinstance(backbone_weights, dict) else {
            name: backbone_weights for name in net.choices}
        for name, path in paths.items():
            load_backbone_weights(net.branch(name).basenet, path)
    return net


def save_checkpoint(net: ASENPlusPlus, path: str | Path,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Write a self-describing checkpoint atomically and durably
    (:func:`model.osutil.replace_atomically`)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.config.to_dict(),
        "attributes": [a.to_dict() for a in net.attributes],
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **(dict(extra) if extra else {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """torch.load with clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unreadable file is the same user error
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch "
                              f"file): {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise CheckpointError(f"{path}: not a checkpoint: expected a dict, got {kind}")
    return data


def _load_state(net: ASENPlusPlus, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Strict load that names the first offending key instead of failing vaguely."""
    own = net.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} keys, e.g. {missing[0]!r}")
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key!r} is not a tensor")
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{path}: shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(own[key].shape)}"
            )
    net.load_state_dict({k: state[k] for k in state}, strict=False)


def _from_project(data: dict, path: Path, attributes: AttributesLike | None) -> ASENPlusPlus:
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {data['format_version']} is newer than "
                              f"this software understands ({FORMAT_VERSION})")
    for key in ("config", "attributes", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path}: project checkpoint lacks {key!r}")
    try:
        config = ModelConfig.from_dict(data["config"])
    except (TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc}") from exc
    attrs = resolve_attributes(data["attributes"])
    if attributes is not None:
        given = resolve_attributes(attributes)
        if [a.name for a in given] != [a.name for a in attrs]:
            raise CheckpointError(f"{path}: the checkpoint's attributes "
                                  f"{[a.name for a in attrs]} differ from those given")
    net = ASENPlusPlus(config, attrs)
    _load_state(net, data["state_dict"], path)
    return net


def _from_published(state: dict, path: Path, attributes: AttributesLike | None) -> ASENPlusPlus:
    if attributes is None:
        raise CheckpointError(
            f"{path}: a published checkpoint carries no attribute names; pass attributes="
            "'FashionAI', 'DARN', 'DeepFashion' or a list of names"
        )
    attrs = resolve_attributes(attributes)
    key = "choices.global.attrnet.attr_embedding.weight"
    if key not in state:
        raise CheckpointError(f"{path}: not an ASEN checkpoint: {key!r} is missing")
    n_attrs = state[key].shape[0]
    if n_attrs != len(attrs):
        raise CheckpointError(f"{path}: shape mismatch for {key!r}: the checkpoint has {n_attrs} "
                              f"attributes, {len(attrs)} were given")
    has_local = any(k.startswith("choices.local.") for k in state)
    config = CONFIGS["paper"] if has_local else CONFIGS["paper"].global_only()
    net = ASENPlusPlus(config, attrs)
    _load_state(net, state, path)
    return net


def load_network(path: str | Path, attributes: AttributesLike | None = None) -> ASENPlusPlus:
    """Rebuild the network from a project or published checkpoint (on the CPU, eval mode)."""
    path = Path(path)
    return _network_of(read_checkpoint_file(path), path, attributes)


def load_network_and_values(path: str | Path, attributes: AttributesLike | None = None
                            ) -> tuple[ASENPlusPlus, tuple[Prototypes | None, Calibration | None]]:
    """:func:`load_network` and the value prototypes and tag calibration the checkpoint
    keeps ((None, None) when none), from one read of the file."""
    from .prototypes import PROTOTYPES_KEY, prototypes_from_payload

    path = Path(path)
    data = read_checkpoint_file(path)
    net = _network_of(data, path, attributes)
    if PROTOTYPES_KEY not in data:
        return net, (None, None)
    return net, prototypes_from_payload(data[PROTOTYPES_KEY], str(path))


def _network_of(data: dict, path: Path, attributes: AttributesLike | None) -> ASENPlusPlus:
    if data.get("format") == FORMAT:
        net = _from_project(data, path, attributes)
    elif isinstance(data.get("model"), dict):
        net = _from_published(data["model"], path, attributes)
    elif any(isinstance(k, str) and k.startswith(PUBLISHED_PREFIX) for k in data):
        net = _from_published(data, path, attributes)  # a bare published state dict
    else:
        raise CheckpointError(f"{path}: not a checkpoint of this project or of the published "
                              f"release (keys: {sorted(map(str, data))[:5]})")
    return net.eval()


@dataclass(frozen=True)
class InitProvenance:
    """Where a fine-tuned run started (``python -m model.train --init``): the checkpoint
    file, its sha256, and its attributes by fate (names): kept (weights copied), new (fresh
    weights), revalued (kept, but the value count differs) and dropped (not in the data)."""

    path: str
    sha256: str
    attributes_kept: tuple[str, ...]
    attributes_new: tuple[str, ...]
    attributes_revalued: tuple[str, ...] = field(default=())
    attributes_dropped: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256,
                "attributes_kept": list(self.attributes_kept),
                "attributes_new": list(self.attributes_new),
                "attributes_revalued": list(self.attributes_revalued),
                "attributes_dropped": list(self.attributes_dropped)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InitProvenance:
        names = ("attributes_kept", "attributes_new", "attributes_revalued",
                 "attributes_dropped")
        return cls(str(data["path"]), str(data["sha256"]),
                   *(tuple(str(n) for n in data.get(k, ())) for k in names))


def describe_checkpoint(path: str | Path) -> str:
    """A few lines about a project checkpoint: architecture, attributes, how it was trained
    and, for a fine-tuned one, where it started (:class:`InitProvenance`)."""
    data = read_checkpoint_file(path)
    if data.get("format") != FORMAT:
        return f"{path}: not a checkpoint of this project (a published one carries no metadata)"
    attrs = ", ".join(f"{a['name']} ({a['n_values']})" for a in data.get("attributes", []))
    lines = [f"{path}: config {data.get('config', {}).get('name', '?')}, attributes: {attrs}"]
    for key in ("training", "train_state"):
        meta = data.get(key)
        if isinstance(meta, dict):
            shown = {k: meta[k] for k in ("stage", "epoch", "valid_map", "best_map") if k in meta}
            lines.append(f"{key}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    if isinstance(data.get("init"), dict):
        init = InitProvenance.from_dict(data["init"])
        lines.append(f"init: {init.path} (sha256 {init.sha256[:12]})")
        for label, names in [("kept", init.attributes_kept), ("new", init.attributes_new),
                             ("revalued", init.attributes_revalued),
                             ("dropped", init.attributes_dropped)]:
            if names:
                lines.append(f"  attributes {label}: {', '.join(names)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model.checkpoint CKPT...``: print :func:`describe_checkpoint` of each."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths or paths[0] in ("-h", "--help"):
        print("usage: python -m model.checkpoint CKPT [CKPT ...]", file=sys.stderr)
        return 0 if paths else 2
    for path in paths:
        try:
            print(describe_checkpoint(path))
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def published_state_dict(net: ASENPlusPlus) -> dict[str, torch.Tensor]:
    """The network's weights under the published release's key names (paper config)."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


__all__ = ["AttributeSpec", "InitProvenance", "build_model", "describe_checkpoint",
           "save_checkpoint", "load_network", "published_state_dict", "read_checkpoint_file"]


if __name__ == "__main__":
    sys.exit(main())
