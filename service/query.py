"""Pieces shared by the search endpoints: validation, admission and result shaping."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import UploadFile

from .batching import Overloaded, Slot
from .errors import ApiError, unavailable
from .schemas import ResultItem, Timings
from .settings import Settings
from .state import ServiceState, Snapshot, require_attribute
from .uploads import decode_image, read_upload


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (a perf_counter value), rounded to microseconds."""
    return round((time.perf_counter() - start) * 1000.0, 3)


def check_k(k: int | None, settings: Settings) -> int:
    """k (default ASEN_DEFAULT_K) within 1..ASEN_MAX_K, else 422."""
    if k is None:
        k = settings.default_k
    if not 1 <= k <= settings.max_k:
        raise ApiError(422, "validation_error", f"k must be between 1 and {settings.max_k}",
                       details=[{"loc": ["k"], "msg": f"must be 1..{settings.max_k}",
                                 "type": "k_out_of_range"}])
    return k


def normalise_weights(raw: dict[str, Any], snap: Snapshot) -> dict[str, float]:
    """Validate attribute weights (known names, finite, >= 0, some > 0); scale to sum 1."""
    if not raw:
        raise ApiError(422, "validation_error", "weights: give at least one attribute",
                       details={"valid": snap.attributes})
    weights: dict[str, float] = {}
    for name, value in raw.items():
        require_attribute(snap, str(name))
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ApiError(422, "validation_error",
                           f"weights.{name}: must be a finite number >= 0",
                           details=[{"loc": ["weights", str(name)], "msg": "must be >= 0",
                                     "type": "weight_invalid"}])
        if value > 0:
            weights[str(name)] = float(value)
    total = sum(weights.values())
    if total <= 0:
        raise ApiError(422, "validation_error", "weights: at least one weight must be > 0")
    return {name: w / total for name, w in weights.items()}


@contextlib.asynccontextmanager
async def admitted(state: ServiceState) -> AsyncIterator[Slot]:
    """A batcher slot, or 503 + Retry-After when the service is saturated."""
    try:
        async with state.batcher.slot() as slot:
            yield slot
    except Overloaded as exc:
        raise unavailable(f"server overloaded ({exc}); retry later",
                          state.settings.retry_after_s, code="overloaded") from exc


def image_url(root_path: str, item_id: str) -> str:
    """Relative URL of an item's image."""
    return f"{root_path}/v1/items/{quote(item_id, safe='')}/image"


def ranked(
    hits: list[tuple[Any, float]] | list[tuple[Any, float, dict[str, float]]],
    k: int,
    root_path: str,
    exclude_id: str | None = None,
) -> list[ResultItem]:
    """Result items from (Item, score[, per-attribute scores]) hits, ranked from 1."""
    out: list[ResultItem] = []
    for hit in hits:
        item, score = hit[0], hit[1]
        if exclude_id is not None and item.id == exclude_id:
            continue
        per_attr = hit[2] if len(hit) > 2 else None
        out.append(ResultItem(
            rank=len(out) + 1, id=item.id, score=float(score),
            scores={a: float(v) for a, v in per_attr.items()} if per_attr is not None else None,
            metadata=dict(item.metadata or {}), image_url=image_url(root_path, item.id),
        ))
        if len(out) == k:
            break
    return out


@dataclass
class EmbeddedUpload:
    """An uploaded image embedded for some attributes, with the stage timings so far."""

    vectors: dict[str, np.ndarray]
    decode_ms: float
    queue_ms: float
    embed_ms: float
    batch_size: int

    def timings(self, search_ms: float, start: float, state: ServiceState) -> Timings:
        """The request's timings (also observed in the per-stage metrics)."""
        t = Timings(decode_ms=self.decode_ms, queue_ms=round(self.queue_ms, 3),
                    embed_ms=round(self.embed_ms, 3), search_ms=search_ms,
                    total_ms=ms_since(start), batch_size=self.batch_size)
        for stage in ("decode", "queue", "embed", "search"):
            state.metrics.observe_stage(stage, getattr(t, f"{stage}_ms"))
        return t


async def embed_upload(state: ServiceState, snap: Snapshot, slot: Slot, upload: UploadFile,
                       settings: Settings, attributes: list[str]) -> EmbeddedUpload:
    """Read, decode and embed an upload for ``attributes`` through the micro-batcher."""
    t = time.perf_counter()
    image = await decode_image(await read_upload(upload, settings), settings)
    decode_ms = ms_since(t)
    results = await state.batcher.embed(slot, snap.embedder, [(image, a) for a in attributes])
    return EmbeddedUpload(
        vectors={a: r.vector for a, r in zip(attributes, results, strict=True)},
        decode_ms=decode_ms, queue_ms=max(r.queue_ms for r in results),
        embed_ms=max(r.embed_ms for r in results), batch_size=max(r.batch_size for r in results))
