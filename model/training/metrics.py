"""Retrieval metrics: attribute-specific MAP (SPEC section 5) and attention localisation.

MAP conventions (fixed here, relied on by tests and benchmarks):

* Ranking: candidates are sorted by descending inner product. Ties in score keep the
  candidate order given to the function (a stable sort on ``-score``), so the result is
  deterministic. The published code uses ``np.argsort(score)[::-1]`` whose tie order is
  unspecified; for real-valued embeddings exact ties are practically absent, so both agree.
* A query with no relevant candidate has AP = 0 (the published ``APScorer`` behaviour) and
  still counts in its attribute's query count.
* AP is computed over the full ranking: the mean over relevant candidates of the precision
  at their rank. Per-attribute MAP is the mean over its queries; the overall MAP is the
  mean of the per-attribute MAPs weighted by their query counts (= the mean over all
  queries). Reported values are in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MapResult",
    "average_precisions",
    "scores_average_precisions",
    "mean_average_precision",
    "attention_peak",
    "crop_point_to_original",
    "peak_in_box",
    "localisation_accuracy",
]

# Bound on the number of score-matrix elements handled at once (per chunk of queries).
_MAX_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class MapResult:
    """MAP of one evaluation, values in percent.

    ``per_attribute`` and the count dicts list the attributes that have queries, in
    attribute-index order; ``query_ap`` holds every query's AP (fraction, input order).
    """

    overall: float
    per_attribute: dict[str, float]
    query_counts: dict[str, int]
    candidate_counts: dict[str, int]
    query_ap: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (without the per-query APs)."""
        return {
            "overall": self.overall,
            "per_attribute": dict(self.per_attribute),
            "counts": {
                "queries": dict(self.query_counts),
                "candidates": dict(self.candidate_counts),
            },
        }


def average_precisions(order_relevance: np.ndarray) -> np.ndarray:
    """AP of each row of a boolean matrix of relevance flags given in ranked order.

    ``order_relevance[i, r]`` is True when the candidate at rank ``r`` (0-based) of query
    ``i`` is relevant. Rows without a relevant item get AP = 0.
    """
    rel = np.asarray(order_relevance, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"expected a 2-D relevance matrix, got shape {rel.shape}")
    n_rows = rel.shape[0]
    rows, cols = np.nonzero(rel)  # row-major: each row's hits are contiguous, by rank
    n_rel = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(n_rel) - n_rel
    hits_so_far = np.arange(rows.size) - starts[rows] + 1  # k-th relevant item of its row
    precision_sum = np.bincount(rows, weights=hits_so_far / (cols + 1.0), minlength=n_rows)
    ap = np.zeros(n_rows, dtype=np.float64)
    np.divide(precision_sum, n_rel, out=ap, where=n_rel > 0)
    return ap


def _descending_order(scores: np.ndarray) -> np.ndarray:
    """Per-row candidate indices by descending score; ties keep candidate order.

    For float32 scores the order is obtained by sorting uint64 keys (order-preserving score
    bits, inverted, in the high word; candidate index in the low word), about twice as fast
    as a stable argsort and identical to ``np.argsort(-scores, kind="stable")`` for finite
    scores (+0.0 and -0.0 tie).
    """
    n_c = scores.shape[1]
    if scores.dtype != np.float32 or n_c >= 1 << 32:
        return np.argsort(-scores, axis=1, kind="stable")
    bits = (scores + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    keys = (~ascending).astype(np.uint64) << np.uint64(32)
    keys |= np.arange(n_c, dtype=np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)


def scores_average_precisions(scores: np.ndarray, query_values: np.ndarray,
                              cand_values: np.ndarray) -> np.ndarray:
    """AP of each query (row of ``scores`` [Q, C]) ranking the candidates by descending score.

    A candidate is relevant when its value equals the query's; ties keep candidate order.
    """
    scores = np.asarray(scores)
    q_val, c_val = np.asarray(query_values), np.asarray(cand_values)
    if scores.ndim != 2 or scores.shape != (q_val.shape[0], c_val.shape[0]):
        raise ValueError(f"scores {scores.shape} do not match {q_val.shape[0]} queries and "
                         f"{c_val.shape[0]} candidates")
    if scores.shape[1] == 0:
        return np.zeros(scores.shape[0], dtype=np.float64)
    order = _descending_order(scores)
    return average_precisions(c_val[order] == q_val[:, None])


def _ranked_ap(q_emb: np.ndarray, q_val: np.ndarray, c_emb: np.ndarray, c_val: np.ndarray,
               chunk: int | None) -> np.ndarray:
    """AP of every query against one attribute's candidates, in query chunks."""
    n_q, n_c = q_emb.shape[0], c_emb.shape[0]
    if n_c == 0:
        return np.zeros(n_q, dtype=np.float64)
    step = chunk or max(1, _MAX_CHUNK_ELEMENTS // n_c)
    out = np.empty(n_q, dtype=np.float64)
    c_t = c_emb.T
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        out[start:stop] = scores_average_precisions(q_emb[start:stop] @ c_t,
                                                    q_val[start:stop], c_val)
    return out


def _rows_for(emb: np.ndarray, mask: np.ndarray, a: int) -> np.ndarray:
    """Embeddings of the masked rows for attribute ``a`` ([N, D] or [N, A, D] input)."""
    return emb[mask, a] if emb.ndim == 3 else emb[mask]


def _check_inputs(name: str, emb: np.ndarray, attr: np.ndarray, val: np.ndarray) -> None:
    if emb.ndim not in (2, 3):
        raise ValueError(f"{name} embeddings must be [N, D] or [N, A, D], got {emb.shape}")
    if not (emb.shape[0] == attr.shape[0] == val.shape[0]):
        raise ValueError(
            f"{name}: {emb.shape[0]} embeddings, {attr.shape[0]} attributes, "
            f"{val.shape[0]} values (must be equal)"
        )
    if attr.ndim != 1 or val.ndim != 1:
        raise ValueError(f"{name}: attributes and values must be 1-D")
    if not np.isfinite(emb).all():
        raise ValueError(f"{name} embeddings contain NaN or infinite values")
    if attr.size and attr.min() < 0:
        raise ValueError(f"{name}: negative attribute index")
    if emb.ndim == 3 and attr.size and attr.max() >= emb.shape[1]:
        raise ValueError(f"{name}: attribute index {attr.max()} >= {emb.shape[1]}")


def mean_average_precision(
    query_emb: np.ndarray,
    query_attr: Sequence[int] | np.ndarray,
    query_val: Sequence[int] | np.ndarray,
    cand_emb: np.ndarray,
    cand_attr: Sequence[int] | np.ndarray,
    cand_val: Sequence[int] | np.ndarray,
    attr_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> MapResult:
    """Attribute-specific MAP (SPEC section 5), in percent.

    Embeddings are ``[N, D]`` (row ``i`` already embedded for its own attribute) or
    ``[N, A, D]`` (every attribute; row ``i`` uses slice ``attr[i]``). Each query is ranked
    against every candidate of its attribute by inner product; ``chunk_size`` queries are
    scored at a time (default: bounded by ~4M score elements).
    """
    q_emb, c_emb = np.asarray(query_emb), np.asarray(cand_emb)
    q_attr = np.asarray(query_attr, dtype=np.int64).reshape(-1)
    q_val = np.asarray(query_val, dtype=np.int64).reshape(-1)
    c_attr = np.asarray(cand_attr, dtype=np.int64).reshape(-1)
    c_val = np.asarray(cand_val, dtype=np.int64).reshape(-1)
    _check_inputs("queries", q_emb, q_attr, q_val)
    _check_inputs("candidates", c_emb, c_attr, c_val)
    if q_emb.shape[-1] != c_emb.shape[-1]:
        raise ValueError(f"embedding sizes differ: {q_emb.shape[-1]} vs {c_emb.shape[-1]}")
    if q_attr.size == 0:
        raise ValueError("no queries to evaluate")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    attrs = np.unique(q_attr)
    if attr_names is not None and attrs.max() >= len(attr_names):
        raise ValueError(f"attribute index {attrs.max()} has no name ({len(attr_names)} names)")

    query_ap = np.zeros(q_attr.shape[0], dtype=np.float64)
    per_attr: dict[str, float] = {}
    q_counts: dict[str, int] = {}
    c_counts: dict[str, int] = {}
    for a in attrs.tolist():
        name = attr_names[a] if attr_names is not None else str(a)
        q_mask, c_mask = q_attr == a, c_attr == a
        ap = _ranked_ap(
            _rows_for(q_emb, q_mask, a), q_val[q_mask],
            _rows_for(c_emb, c_mask, a), c_val[c_mask], chunk_size,
        )
        query_ap[q_mask] = ap
        per_attr[name] = 100.0 * float(ap.mean())
        q_counts[name] = int(q_mask.sum())
        c_counts[name] = int(c_mask.sum())
    total = sum(q_counts.values())
    overall = sum(per_attr[n] * q_counts[n] for n in per_attr) / total
    return MapResult(overall, per_attr, q_counts, c_counts, query_ap)


# ---------------------------------------------------------------- localisation accuracy


def attention_peak(attention: np.ndarray) -> tuple[float, float]:
    """Centre of the attention map's highest cell as fractions (x, y) of the crop.

    Ties go to the first cell in row-major order.
    """
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 2 or att.size == 0:
        raise ValueError(f"attention map must be a non-empty 2-D array, got {att.shape}")
    h, w = att.shape
    i, j = divmod(int(np.argmax(att)), w)
    return (j + 0.5) / w, (i + 0.5) / h


def crop_point_to_original(
    u: float, v: float, image_size: tuple[int, int],
    crop_box: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Map a point given as fractions (u, v) of the model input to original pixel coordinates.

    ``crop_box`` is the region (x0, y0, x1, y1) of the original image that the input shows
    (e.g. ``model.roi.CropGeometry.crop_box()``). Without it, the crop of "resize the short
    side to S, centre-crop S x S" is taken as the centred ``m x m`` square,
    ``m = min(width, height)``, whatever S is (exact up to the resize rounding, ~1 px).
    """
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid image size {image_size}")
    if crop_box is None:
        m = min(width, height)
        crop_box = ((width - m) / 2.0, (height - m) / 2.0, (width + m) / 2.0, (height + m) / 2.0)
    x0, y0, x1, y1 = (float(c) for c in crop_box)
    return x0 + u * (x1 - x0), y0 + v * (y1 - y0)


def peak_in_box(attention: np.ndarray, image_size: tuple[int, int], box: Sequence[float],
                crop_box: Sequence[float] | None = None) -> bool:
    """Whether the attention peak, mapped to the original image, lies in ``box``.

    ``box`` is ``(x0, y0, x1, y1)`` in original pixel coordinates, borders included;
    ``crop_box`` as in :func:`crop_point_to_original`.
    """
    x0, y0, x1, y1 = (float(b) for b in box)
    x, y = crop_point_to_original(*attention_peak(attention), image_size, crop_box)
    return x0 <= x <= x1 and y0 <= y <= y1


def localisation_accuracy(
    attention_maps: Sequence[np.ndarray],
    image_sizes: Sequence[tuple[int, int]],
    boxes: Sequence[Sequence[float]],
    crop_boxes: Sequence[Sequence[float] | None] | None = None,
) -> float:
    """Percentage of images whose attention peak falls inside their ground-truth box.

    ``attention_maps[i]`` is the [h, w] map over the model input of image ``i``, whose
    original ``(width, height)`` is ``image_sizes[i]``; ``boxes[i]`` is in original pixels;
    ``crop_boxes[i]`` (optional) the original region the input shows.
    """
    n = len(attention_maps)
    crops = [None] * n if crop_boxes is None else list(crop_boxes)
    if not (n == len(image_sizes) == len(boxes) == len(crops)):
        raise ValueError("attention_maps, image_sizes, boxes (and crop_boxes) differ in length")
    if n == 0:
        raise ValueError("no images to evaluate")
    hits = sum(
        peak_in_box(att, size, box, crop)
        for att, size, box, crop in zip(attention_maps, image_sizes, boxes, crops, strict=True)
    )
    return 100.0 * hits / n
