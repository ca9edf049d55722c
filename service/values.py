"""The value space the service answers from: each attribute's value prototypes and the tag
calibration (issue 22).

The served index's own (:meth:`CatalogIndexLike.prototypes`, the catalog's labels merged over
the checkpoint's) when it has them, else the embedder checkpoint's
(:func:`model.prototypes.read_prototypes`, read once per checkpoint file). Read once per
snapshot when it is loaded, restricted to the index's attributes. A value or attribute it does
not know is a 422 whose message and ``details`` list the known values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from indexer.items import Rescore
from model.manipulation import (
    DEFAULT_POOL,
    DEFAULT_TARGET_WEIGHT,
    agreement_of,
    agreement_scores,
    manipulate,
    same_item,
)
from model.prototypes import AttributePrototypes, Prototypes, UnknownValueError, ValuePrototype
from model.tagging import Calibration, Tagger

from .errors import ApiError
from .protocols import CatalogIndexLike

log = logging.getLogger("service")

ValuesSource = Literal["index", "checkpoint"]


@dataclass(frozen=True)
class ValueScore:
    """One value of an attribute and its calibrated probability for a query."""

    value: str
    confidence: float


@dataclass(frozen=True, eq=False)
class ValueSpace:
    """Per attribute of the served index, its value prototypes, and the calibration."""

    prototypes: Prototypes
    calibration: Calibration | None
    source: ValuesSource
    tagger: Tagger = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tagger", Tagger(self.prototypes, self.calibration))

    @property
    def attributes(self) -> list[str]:
        return self.prototypes.names()

    def known(self) -> dict[str, list[str]]:
        """attribute -> its value names, in value order."""
        return {a: [p.name for p in ap.values] for a, ap in self.prototypes.attributes.items()}

    def attribute(self, name: str) -> AttributePrototypes:
        """The attribute's prototypes; 422 unknown_attribute listing the known values."""
        if name not in self.prototypes:
            raise unknown_attribute(name, self)
        return self.prototypes[name]

    def prototype(self, attribute: str, value: str) -> ValuePrototype:
        """The prototype of ``value`` (trimmed, case-insensitive) of ``attribute``; 422
        unknown_attribute / unknown_value listing the known values."""
        try:
            return self.attribute(attribute).get(value)
        except UnknownValueError as exc:
            raise unknown_value(attribute, value, exc.valid) from None

    def ranked(self, attribute: str, vector: np.ndarray) -> list[ValueScore]:
        """The attribute's values for one unit query vector [D], most probable first."""
        probs = self.tagger.probabilities(attribute, vector[None, :])[0]
        names = [p.name for p in self.prototypes[attribute].values]
        order = np.argsort(-probs, kind="stable")
        return [ValueScore(names[i], float(probs[i])) for i in order]


def unknown_attribute(name: str, space: ValueSpace | None) -> ApiError:
    """422 unknown_attribute: ``details.valid`` the attributes with values,
    ``details.values`` each one's values."""
    known = space.known() if space is not None else {}
    listed = "; ".join(f"{a}: {', '.join(v)}" for a, v in known.items()) or "(none)"
    return ApiError(422, "unknown_attribute",
                    f"unknown attribute {name!r} (or one without values); known attributes "
                    f"and values: {listed}",
                    details={"attribute": name, "valid": list(known), "values": known})


def unknown_value(attribute: str, value: str, valid: Sequence[str]) -> ApiError:
    """422 unknown_value: ``details.valid`` the attribute's known values."""
    return ApiError(422, "unknown_value",
                    f"attribute {attribute!r} has no value {value!r}; known values: "
                    f"{', '.join(valid) or '(none)'}",
                    details={"attribute": attribute, "value": value, "valid": list(valid)})


def require_values(space: ValueSpace | None, attribute: str) -> ValueSpace:
    """The value space, or 422 unknown_attribute when the service has none at all."""
    if space is None:
        raise unknown_attribute(attribute, None)
    return space


# ---------------------------------------------------------------------- loading


def _restricted(protos: Prototypes, attributes: Sequence[str]) -> Prototypes:
    return Prototypes({a: ap for a, ap in protos.attributes.items() if a in attributes})


class CheckpointValues:
    """The checkpoints' prototypes and calibration, each file read once (by path, size and
    modification time); a file without them, or one that cannot be read, gives None."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int, int], tuple[Prototypes | None, Calibration | None]]
        self._cache = {}

    def read(self, path: Path) -> tuple[Prototypes | None, Calibration | None]:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = _read_checkpoint(path)
            return self._cache[key]


def _read_checkpoint(path: Path) -> tuple[Prototypes | None, Calibration | None]:
    from model.errors import CheckpointError
    from model.prototypes import read_prototypes

    try:
        return read_prototypes(path)
    except (CheckpointError, OSError) as exc:
        log.warning("no value prototypes from checkpoint %s: %s", path.name, exc)
        return None, None


def load_value_space(index: CatalogIndexLike, attributes: Sequence[str], checkpoint: Path,
                     fallback: CheckpointValues) -> ValueSpace | None:
    """The value space of a snapshot (run on its index threads): the index's prototypes, else
    the checkpoint's; None when neither has any for the index's attributes."""
    protos, calibration = index.prototypes(), index.calibration()
    source: ValuesSource = "index"
    if protos is None:
        protos, calibration = fallback.read(checkpoint)
        source = "checkpoint"
    if protos is None:
        return None
    served = _restricted(protos, attributes)
    return ValueSpace(served, calibration, source) if served.attributes else None


def value_vectors(space: ValueSpace, targets: Mapping[str, str]) -> dict[str, ValuePrototype]:
    """The prototype of each ``attribute -> value`` target (422 for an unknown one)."""
    return {a: space.prototype(a, v) for a, v in targets.items()}


@dataclass(frozen=True)
class ButWith:
    """A checked "like this, but with" query: the targets' prototypes, and the attributes
    that keep the query's own embedding (the only ones to embed or look up)."""

    space: ValueSpace
    attributes: list[str]               # ranked by: every attribute of the index
    targets: dict[str, ValuePrototype]

    @classmethod
    def of(cls, space: ValueSpace | None, attributes: Sequence[str],
           but_with: Mapping[str, str]) -> ButWith:
        """422 unknown_attribute / unknown_value for a target the value space lacks."""
        first = next(iter(but_with))
        checked = require_values(space, first)
        return cls(checked, list(attributes), value_vectors(checked, but_with))

    @property
    def kept(self) -> list[str]:
        return [a for a in self.attributes if a not in self.targets]

    def names(self) -> dict[str, str]:
        """attribute -> the target value's name, as the value space spells it."""
        return {a: p.name for a, p in self.targets.items()}

    def query(self, own: Mapping[str, np.ndarray], *, tagged: Collection[str] = (),
              leave_out_same: bool = True,
              target_weight: float = DEFAULT_TARGET_WEIGHT) -> ButWithQuery:
        """The query of ``own``, the query's embeddings of :attr:`kept`
        (:func:`model.manipulation.manipulate`, ranked by
        :func:`model.manipulation.agreement_scores`); its candidates are the items tagged
        with the target value of each target in ``tagged`` (the attributes the index has tags
        for); ``leave_out_same``: without the items that are the query's own
        (:func:`model.manipulation.same_item`: an upload of a catalog image; a by-item search
        leaves its item out by id instead)."""
        mq = manipulate(own, self.space.prototypes, self.names(), target_weight,
                        attributes=self.attributes)
        total = sum(mq.weights.values())
        stage = agreement_of(mq, own, self.space.tagger)
        tagger = self.space.tagger

        def rescore(items: Mapping[str, np.ndarray]) -> np.ndarray:
            scores = agreement_scores(mq, stage, items, tagger)
            if leave_out_same:
                scores[same_item(own, items)] = -np.inf
            return scores

        names = self.names()
        return ButWithQuery(names, {a: w / total for a, w in mq.weights.items()},
                            mq.vectors, rescore,
                            filters={a: v for a, v in names.items() if a in tagged})


@dataclass(frozen=True)
class ButWithQuery:
    """A "like this, but with" query: its targets (attribute -> value name), the weights
    (summing to 1) and vectors whose inner products gather the candidates (each attribute's
    top ``pool`` at least, among the items that match ``filters``: the targets the index has
    tags for), and ``rescore``, which ranks them from their stored vectors of every attribute
    (-inf: an item to leave out)."""

    names: dict[str, str]
    weights: dict[str, float]
    vectors: dict[str, np.ndarray]
    rescore: Rescore
    pool: int = DEFAULT_POOL
    filters: dict[str, str] = field(default_factory=dict)


__all__ = ["ButWith", "ButWithQuery", "CheckpointValues", "ValueScore", "ValueSpace",
           "ValuesSource", "load_value_space", "require_values", "unknown_attribute",
           "unknown_value", "value_vectors"]
