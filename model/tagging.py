"""Tags: every item gets, for every attribute, a value and a calibrated confidence (issue 22).

The value is the nearest value prototype by cosine in the attribute's own space
(:mod:`model.prototypes`). The confidence is the largest probability of a temperature-scaled
softmax over the cosines to the attribute's prototypes, ``softmax(cos / T)``, with one
temperature per attribute fitted on labelled validation data by minimising the negative
log-likelihood (:func:`fit_temperature`, Guo et al. 2017's temperature scaling), so that
confidence 0.9 is right about 90% of the time (:func:`expected_calibration_error`). An item's own
catalog label stays its value, marked as a label with confidence 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .prototypes import AttributePrototypes, Prototypes, UnknownValueError

ECE_BINS = 15
CALIBRATION_METHOD = ("temperature-scaled softmax over the cosines to the attribute's value "
                      "prototypes, one temperature per attribute fitted by minimising the "
                      "negative log-likelihood of the true value")


@dataclass(frozen=True)
class Calibration:
    """Per-attribute softmax temperatures and where they were fitted."""

    temperatures: Mapping[str, float]
    fitted_on: str
    method: str = CALIBRATION_METHOD

    def temperature(self, attribute: str) -> float:
        return float(self.temperatures.get(attribute, 1.0))

    def to_dict(self) -> dict:
        return {"temperatures": {a: float(t) for a, t in self.temperatures.items()},
                "fitted_on": self.fitted_on, "method": self.method}

    @classmethod
    def from_dict(cls, d: Mapping) -> Calibration:
        temps = {str(a): float(t) for a, t in d["temperatures"].items()}
        if any(not (t > 0 and math.isfinite(t)) for t in temps.values()):
            raise ValueError(f"temperatures must be positive: {temps}")
        return cls(temps, str(d["fitted_on"]), str(d.get("method", CALIBRATION_METHOD)))


@dataclass(frozen=True)
class TagColumn:
    """One attribute's tags for N items."""

    attribute: str
    values: np.ndarray        # int64 [N] value index
    names: list[str]          # value name per item
    confidences: np.ndarray   # float32 [N]; 1.0 for labels
    is_label: np.ndarray      # bool [N]: the item's own label, not a prediction


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin of a reliability table."""

    low: float
    high: float
    count: int
    mean_confidence: float
    accuracy: float


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature`` (float64)."""
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of the true columns ``labels`` (row positions) under softmax(scores / T)."""
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def fit_temperature(scores: np.ndarray, labels: np.ndarray, low: float = 1e-4,
                    high: float = 100.0, iterations: int = 80) -> float:
    """The temperature minimising the NLL of ``labels`` (column positions of ``scores``).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search over
    ``[low, high]`` in log space finds it.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no labelled rows to fit a temperature on")
    a, b = math.log(low), math.log(high)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc = negative_log_likelihood(scores, labels, math.exp(c))
    fd = negative_log_likelihood(scores, labels, math.exp(d))
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = negative_log_likelihood(scores, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = negative_log_likelihood(scores, labels, math.exp(d))
    return float(math.exp((a + b) / 2))


def _bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each confidence: equal-width bins over [0, 1], (low, high] as in Guo et al."""
    return np.clip(np.ceil(np.asarray(confidence, np.float64) * bins).astype(np.int64) - 1,
                   0, bins - 1)


def reliability_table(confidence: np.ndarray, correct: np.ndarray,
                      bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins too)."""
    conf = np.asarray(confidence, np.float64)
    ok = np.asarray(correct, bool)
    which = _bins(conf, bins)
    out = []
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        out.append(ReliabilityBin(b / bins, (b + 1) / bins, n,
                                  float(conf[m].mean()) if n else 0.0,
                                  float(ok[m].mean()) if n else 0.0))
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin share) x |accuracy - mean confidence|."""
    n = len(np.asarray(confidence))
    if n == 0:
        return 0.0
    return float(sum(b.count / n * abs(b.accuracy - b.mean_confidence)
                     for b in reliability_table(confidence, correct, bins)))


class Tagger:
    """Nearest-prototype tags with calibrated confidences."""

    def __init__(self, prototypes: Prototypes, calibration: Calibration | None = None):
        self.prototypes = prototypes
        self.calibration = calibration
        self._matrix = {a: ap.matrix() for a, ap in prototypes.attributes.items()}
        self._index = {a: ap.indices() for a, ap in prototypes.attributes.items()}

    @property
    def attributes(self) -> list[str]:
        return self.prototypes.names()

    def cosines(self, attribute: str, embeddings: np.ndarray) -> np.ndarray:
        """[N, V] cosines of unit-norm ``embeddings`` [N, D] to the attribute's prototypes."""
        self.prototypes[attribute]  # UnknownAttributeError for an attribute without any
        return np.atleast_2d(np.asarray(embeddings, np.float32)) @ self._matrix[attribute].T

    def temperature(self, attribute: str) -> float:
        return 1.0 if self.calibration is None else self.calibration.temperature(attribute)

    def probabilities(self, attribute: str, embeddings: np.ndarray) -> np.ndarray:
        """[N, V] calibrated probabilities, columns in prototype order."""
        return softmax(self.cosines(attribute, embeddings), self.temperature(attribute))

    def tag(self, attribute: str, embeddings: np.ndarray,
            labels: Sequence[int] | np.ndarray | None = None) -> TagColumn:
        """Tags of N items for one attribute; ``labels[i] >= 0`` keeps item i's own label."""
        probs = self.probabilities(attribute, embeddings)
        best = probs.argmax(axis=1)
        values = self._index[attribute][best]
        conf = probs[np.arange(len(probs)), best].astype(np.float32)
        lab = np.full(len(values), -1, np.int64) if labels is None else \
            np.asarray(labels, dtype=np.int64)
        if len(lab) != len(values):
            raise ValueError(f"{len(lab)} labels for {len(values)} items")
        is_label = lab >= 0
        values = np.where(is_label, lab, values)
        conf = np.where(is_label, np.float32(1.0), conf)
        ap = self.prototypes[attribute]
        names = [_value_name(ap, int(v)) for v in values]
        return TagColumn(attribute, values, names, conf, is_label)

    def tag_all(self, embeddings: Mapping[str, np.ndarray],
                labels: Mapping[str, Sequence[int] | np.ndarray] | None = None
                ) -> dict[str, TagColumn]:
        """:meth:`tag` for every attribute that has both embeddings and prototypes."""
        return {a: self.tag(a, e, None if labels is None else labels.get(a))
                for a, e in embeddings.items() if a in self.prototypes}


def _value_name(ap: AttributePrototypes, value: int) -> str:
    try:
        return ap.get(value).name
    except UnknownValueError:  # a label of a value no prototype was made for
        return str(value)


__all__ = ["CALIBRATION_METHOD", "Calibration", "ECE_BINS", "ReliabilityBin", "TagColumn",
           "Tagger", "expected_calibration_error", "fit_temperature", "negative_log_likelihood",
           "reliability_table", "softmax"]
