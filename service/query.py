"""Pieces shared by the search endpoints: validation, admission and result shaping."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import Request, UploadFile

from .batching import Overloaded, Slot
from .errors import ApiError, unavailable
from .ranking import Ranked
from .schemas import ResultItem, Timings
from .settings import Settings
from .state import ServiceState, Snapshot, require_attribute
from .uploads import prepare_image, read_upload


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
    top = max(weights.values(), default=0.0)
    if top <= 0:
        raise ApiError(422, "validation_error", "weights: at least one weight must be > 0")
    total = math.fsum(w / top for w in weights.values())   # scaled first: no overflow
    return {name: w / top / total for name, w in weights.items()}


@contextlib.asynccontextmanager
async def admitted(state: ServiceState) -> AsyncIterator[Slot]:
    """A batcher slot, or 503 + Retry-After when the service is saturated."""
    try:
        async with state.batcher.slot() as slot:
            yield slot
    except Overloaded as exc:
        raise unavailable(f"server overloaded ({exc}); retry later",
                          state.settings.retry_after_s, code="overloaded") from exc


def image_url(request: Request, item_id: str) -> str:
    """Relative URL of an item's image (behind ASEN_ROOT_PATH too), from its route's name."""
    path = request.app.url_path_for("get_item_image", item_id=quote(item_id, safe=""))
    return f"{request.scope.get('root_path', '')}{path}"


def result_items(hits: Ranked, request: Request) -> list[ResultItem]:
    """Result items from ranked hits ((Item, score[, per-attribute scores]), group value)."""
    out: list[ResultItem] = []
    for hit, group in hits:
        item, score = hit[0], hit[1]
        per_attr = hit[2] if len(hit) > 2 else None
        out.append(ResultItem(
            rank=len(out) + 1, id=item.id, score=float(score),
            scores={a: float(v) for a, v in per_attr.items()} if per_attr is not None else None,
            metadata=dict(item.metadata or {}), image_url=image_url(request, item.id),
            group=group,
        ))
    return out


@dataclass
class EmbedCost:
    """What embedding the uploads of a request cost."""

    decode_ms: float
    queue_ms: float
    embed_ms: float
    batch_size: int

    def timings(self, search_ms: float, start: float) -> Timings:
        """The request's timings, these stages and the search."""
        return Timings(decode_ms=self.decode_ms, queue_ms=round(self.queue_ms, 3),
                       embed_ms=round(self.embed_ms, 3), search_ms=search_ms,
                       total_ms=ms_since(start), batch_size=self.batch_size)


def record(request: Request, timings: Timings, **stages: float | None) -> Timings:
    """Hand a request's stage timings to the metrics: RequestContextMiddleware observes
    them when the request is answered (``stages`` adds or overrides stages)."""
    request.state.stages = {"decode": timings.decode_ms, "queue": timings.queue_ms,
                            "embed": timings.embed_ms, "search": timings.search_ms, **stages}
    return timings


@dataclass
class EmbeddedUploads(EmbedCost):
    """Uploaded images embedded for their attributes: per upload, attribute -> vector."""

    vectors: list[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass
class EmbeddedUpload(EmbedCost):
    """One uploaded image embedded for some attributes: attribute -> vector."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)


async def _prepared(upload: UploadFile, settings: Settings, snap: Snapshot) -> Any:
    return await prepare_image(await read_upload(upload, settings), settings,
                               snap.embedder.preprocess)


async def embed_uploads(state: ServiceState, snap: Snapshot, slot: Slot,
                        uploads: Sequence[UploadFile], attributes: Sequence[Sequence[str]],
                        settings: Settings) -> EmbeddedUploads:
    """Read, decode and preprocess the uploads (in the decode pool), then embed each one for
    its attributes through the micro-batcher: one global-trunk pass per image."""
    t = time.perf_counter()
    prepared = await asyncio.gather(*(_prepared(u, settings, snap) for u in uploads))
    decode_ms = ms_since(t)
    results = await state.batcher.embed(slot, snap.embedder,
                                        list(zip(prepared, attributes, strict=True)))
    return EmbeddedUploads(
        vectors=[dict(zip(attrs, r.vectors, strict=True))
                 for attrs, r in zip(attributes, results, strict=True)],
        decode_ms=decode_ms, queue_ms=max(r.queue_ms for r in results),
        embed_ms=max(r.embed_ms for r in results), batch_size=max(r.batch_size for r in results))


async def embed_upload(state: ServiceState, snap: Snapshot, slot: Slot, upload: UploadFile,
                       settings: Settings, attributes: list[str]) -> EmbeddedUpload:
    """Read, decode and embed one upload for ``attributes`` (one trunk pass)."""
    up = await embed_uploads(state, snap, slot, [upload], [attributes], settings)
    return EmbeddedUpload(vectors=up.vectors[0], decode_ms=up.decode_ms, queue_ms=up.queue_ms,
                          embed_ms=up.embed_ms, batch_size=up.batch_size)
