"""Value prototypes: per attribute, the normalised mean embedding of the items labelled with
each value (issue 22).

A prototype lives in its attribute's own embedding space, so it answers "what a V-neck looks
like to the neckline space". They are made at training time from the training labels and kept
in the checkpoint (the optional ``prototypes`` key, :func:`write_prototypes`), and at index build
time from a catalog's own label columns (:func:`compute_prototypes` on the catalog's embeddings);
:func:`merge_prototypes` lets the catalog's win. Every prototype records how many items made it
and where they came from.

numpy only; torch is imported by the checkpoint helpers alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CheckpointError, UnknownAttributeError

if TYPE_CHECKING:
    from .tagging import Calibration

PROTOTYPES_KEY = "prototypes"
SOURCES = ("train", "catalog")


class UnknownValueError(ValueError):
    """A value name or index that an attribute's prototypes do not know."""

    def __init__(self, attribute: str, value: object, valid: Sequence[str]):
        self.attribute = attribute
        self.value = value
        self.valid = list(valid)
        super().__init__(f"attribute {attribute!r} has no prototype for value {value!r}; "
                         f"known values: {', '.join(valid) or '(none)'}")


@dataclass(frozen=True, eq=False)
class ValuePrototype:
    """One value's prototype: a unit vector in its attribute's space (compared by identity:
    it holds an array)."""

    value: int
    name: str
    vector: np.ndarray
    count: int
    source: str


@dataclass(frozen=True, eq=False)
class AttributePrototypes:
    """The prototypes of one attribute's values, sorted by value index."""

    attribute: str
    values: tuple[ValuePrototype, ...]
    _by_name: dict[str, ValuePrototype] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(sorted(self.values, key=lambda p: p.value)))
        object.__setattr__(self, "_by_name", {p.name.strip().casefold(): p for p in self.values})

    def matrix(self) -> np.ndarray:
        """[V, D] float32, row i = ``values[i].vector``."""
        return np.stack([p.vector for p in self.values]).astype(np.float32, copy=False)

    def indices(self) -> np.ndarray:
        """[V] int64 value indices in row order of :meth:`matrix`."""
        return np.array([p.value for p in self.values], dtype=np.int64)

    def get(self, value: int | str) -> ValuePrototype:
        """The prototype of a value given by index or name (trimmed, case-insensitive)."""
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            for p in self.values:
                if p.value == int(value):
                    return p
        elif isinstance(value, str) and value.strip().casefold() in self._by_name:
            return self._by_name[value.strip().casefold()]
        raise UnknownValueError(self.attribute, value, [p.name for p in self.values])


@dataclass(frozen=True, eq=False)
class Prototypes:
    """Every attribute's value prototypes."""

    attributes: Mapping[str, AttributePrototypes]

    def __getitem__(self, attribute: str) -> AttributePrototypes:
        if attribute not in self.attributes:
            raise UnknownAttributeError(attribute, self.names())
        return self.attributes[attribute]

    def __contains__(self, attribute: object) -> bool:
        return attribute in self.attributes

    def names(self) -> list[str]:
        return list(self.attributes)

    def summary(self) -> dict[str, dict[str, dict[str, int | str]]]:
        """attr -> value name -> {"count", "source"}: what an index manifest records."""
        return {a: {p.name: {"count": p.count, "source": p.source} for p in ap.values}
                for a, ap in self.attributes.items()}


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n if n > 1e-12 else v).astype(np.float32)


def compute_prototypes(embeddings: Mapping[str, np.ndarray],
                       labels: Mapping[str, Sequence[int] | np.ndarray],
                       source: str,
                       value_names: Mapping[str, Sequence[str]] | None = None) -> Prototypes:
    """Prototypes from labelled embeddings.

    ``embeddings[a]``: [N, D], item i's embedding for attribute ``a``; ``labels[a]``: [N]
    value indices, -1 where item i is not labelled for ``a``. Attributes missing from
    ``labels`` and values no item carries get no prototype. ``value_names[a][v]`` names value
    ``v`` (default ``str(v)``).
    """
    out: dict[str, AttributePrototypes] = {}
    for attr, emb in embeddings.items():
        if attr not in labels:
            continue
        lab = np.asarray(labels[attr], dtype=np.int64)
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or len(lab) != len(emb):
            raise ValueError(f"{attr}: {len(lab)} labels for embeddings of shape {emb.shape}")
        names = list(value_names.get(attr, ())) if value_names else []
        protos = []
        for v in np.unique(lab[lab >= 0]):
            rows = emb[lab == v]
            name = names[v] if v < len(names) else str(int(v))
            protos.append(ValuePrototype(int(v), name, _unit(rows.mean(axis=0)), len(rows), source))
        if protos:
            out[attr] = AttributePrototypes(attr, tuple(protos))
    return Prototypes(out)


def merge_prototypes(base: Prototypes, override: Prototypes) -> Prototypes:
    """Per (attribute, value), ``override``'s prototype where it has one, else ``base``'s
    (the catalog's labels win over the checkpoint's prototypes)."""
    out: dict[str, AttributePrototypes] = {}
    for attr in list(base.attributes) + [a for a in override.attributes if a not in base]:
        merged = {p.value: p for p in base.attributes[attr].values} if attr in base else {}
        if attr in override:
            merged.update({p.value: p for p in override.attributes[attr].values})
        out[attr] = AttributePrototypes(attr, tuple(merged.values()))
    return Prototypes(out)


def labels_from_names(column: Sequence[str | None], value_names: Sequence[str]) -> np.ndarray:
    """A label column of value names as value indices; empty / None -> -1.

    Names match trimmed and case-insensitive; an unknown name raises :class:`ValueError`.
    """
    index = {n.strip().casefold(): i for i, n in enumerate(value_names)}
    out = np.full(len(column), -1, dtype=np.int64)
    for i, raw in enumerate(column):
        text = "" if raw is None else str(raw).strip()
        if not text:
            continue
        if text.casefold() not in index:
            raise ValueError(f"row {i}: value {text!r} is not one of {', '.join(value_names)}")
        out[i] = index[text.casefold()]
    return out


# ------------------------------------------------------------------------- checkpoint key


def prototypes_to_payload(protos: Prototypes, calibration: Calibration | None = None) -> dict:
    """The checkpoint's ``prototypes`` entry (tensors, lists and strings: weights_only-safe)."""
    import torch

    attrs = {a: {"values": [p.value for p in ap.values], "names": [p.name for p in ap.values],
                 "vectors": torch.from_numpy(ap.matrix().copy()),
                 "counts": [p.count for p in ap.values], "sources": [p.source for p in ap.values]}
             for a, ap in protos.attributes.items()}
    payload: dict = {"attributes": attrs}
    if calibration is not None:
        payload["calibration"] = calibration.to_dict()
    return payload


def prototypes_from_payload(payload: object, where: str = "checkpoint"
                            ) -> tuple[Prototypes, Calibration | None]:
    """Inverse of :func:`prototypes_to_payload`; :class:`CheckpointError` on a bad entry."""
    from .tagging import Calibration

    try:
        assert isinstance(payload, dict)
        out = {}
        for attr, d in payload["attributes"].items():
            vecs = d["vectors"].float().numpy()
            rows = zip(d["values"], d["names"], vecs, d["counts"], d["sources"], strict=True)
            out[str(attr)] = AttributePrototypes(str(attr), tuple(
                ValuePrototype(int(v), str(n), np.asarray(x, np.float32), int(c), str(s))
                for v, n, x, c, s in rows))
        cal = payload.get("calibration")
        return Prototypes(out), (Calibration.from_dict(cal) if cal is not None else None)
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: invalid {PROTOTYPES_KEY!r} entry: "
                              f"{exc.__class__.__name__}: {exc}") from exc


def read_prototypes(checkpoint: str | Path) -> tuple[Prototypes | None, Calibration | None]:
    """The prototypes (and tag calibration) a checkpoint keeps; ``(None, None)`` if none."""
    from .checkpoint import read_checkpoint_file

    data = read_checkpoint_file(checkpoint)
    if PROTOTYPES_KEY not in data:
        return None, None
    return prototypes_from_payload(data[PROTOTYPES_KEY], str(checkpoint))


def write_prototypes(checkpoint: str | Path, protos: Prototypes,
                     calibration: Calibration | None = None) -> None:
    """Store prototypes (and calibration) in a project checkpoint, atomically; every other key
    stays as it was, so the file loads as before."""
    import torch

    from .checkpoint import FORMAT, read_checkpoint_file
    from .osutil import replace_atomically

    path = Path(checkpoint)
    data = read_checkpoint_file(path)
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: prototypes can only be stored in this project's "
                              "checkpoint format")
    data[PROTOTYPES_KEY] = prototypes_to_payload(protos, calibration)
    replace_atomically(path, lambda tmp: torch.save(data, tmp))


__all__ = ["AttributePrototypes", "PROTOTYPES_KEY", "Prototypes", "UnknownValueError",
           "ValuePrototype", "compute_prototypes", "labels_from_names", "merge_prototypes",
           "prototypes_from_payload", "prototypes_to_payload", "read_prototypes",
           "write_prototypes"]
