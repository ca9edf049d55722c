"""Pieces shared by the search endpoints: admission, embedding uploads, ranking on the index
threads, and shaping the answer (results, timings)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
from fastapi import Request, UploadFile
from starlette.applications import Starlette

from indexer.filters import DEFAULT_MIN_CONFIDENCE, Filters, TagFilters
from indexer.items import Rescore

from .batching import Deferred, Overloaded, Slot
from .errors import ApiError, unavailable
from .facets import item_facets, tag_infos, tagged_attributes
from .grouping import Ranked
from .ranking import single_fetch, top_hits, weighted_fetch
from .schemas import QueryInfo, ResultItem, SearchResponse, Timings
from .settings import Settings
from .state import ServiceState, Snapshot, require_attribute
from .uploads import deferred_image, prepare_image, read_upload

if TYPE_CHECKING:
    from model.preprocess import PreparedImage


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


def served_weights(weights: Mapping[str, float], snap: Snapshot) -> dict[str, float]:
    """Weights (normalised by the schema) on attributes of the served index; zeros dropped."""
    for name in weights:
        require_attribute(snap, name)
    return {name: w for name, w in weights.items() if w > 0}


@contextlib.asynccontextmanager
async def admitted(state: ServiceState) -> AsyncIterator[Slot]:
    """A batcher slot, or 503 + Retry-After when the service is saturated."""
    try:
        async with state.batcher.slot() as slot:
            yield slot
    except Overloaded as exc:
        raise unavailable(f"server overloaded ({exc}); retry later",
                          state.settings.retry_after_s, code="overloaded") from exc


# ---------------------------------------------------------------- ranking


@dataclass(frozen=True)
class Ranking:
    """What to rank and how: the checked ``k``, the filters (with the confidence predicted
    tags need to match them), the grouping column and how many top results the facets
    count (None: no facets)."""

    k: int
    filters: Filters | None = None
    group_by: str | None = None
    min_confidence: float | None = None
    facets: int | None = None

    @classmethod
    def of(cls, k: int | None, filters: Filters | None, group_by: str | None,
           settings: Settings, min_confidence: float | None = None,
           facets: int | None = None) -> Ranking:
        conf = settings.min_confidence if min_confidence is None else float(min_confidence)
        return cls(check_k(k, settings), TagFilters(filters, conf) if filters else None,
                   group_by, conf, facets)

    @property
    def depth(self) -> int:
        """Hits to rank: k, or the facets' N when larger."""
        return max(self.k, self.facets or 0)

    def with_targets(self, targets: Mapping[str, str]) -> Ranking:
        """This ranking among the items tagged with every ``targets`` value too (a "but with"
        query's candidates, at the same ``min_confidence`` as the filters); 422
        conflicting_filter when a filter names one of the targets' attributes."""
        if not targets:
            return self
        clash = sorted(set(self.filters or {}) & set(targets))
        if clash:
            raise ApiError(422, "conflicting_filter",
                           f"but_with sets {clash[0]!r}, which filters also name; leave it "
                           f"out of filters", details={"attributes": clash})
        conf = DEFAULT_MIN_CONFIDENCE if self.min_confidence is None else self.min_confidence
        return dataclasses.replace(
            self, filters=TagFilters({**(self.filters or {}), **targets}, conf))


async def rank(snap: Snapshot, settings: Settings, weights: dict[str, float],
               vectors: dict[str, np.ndarray], ranking: Ranking, *, single: bool,
               with_scores: bool = False, exclude_id: str | None = None,
               rescore: tuple[Rescore, int] | None = None) -> Ranked:
    """The top hits of a query, ranked on the index threads.

    ``single``: one attribute searched in its own index (``with_scores``: listing its score
    per attribute too); otherwise the weighted sum of every attribute's similarity, or
    ``rescore`` (with its candidates per attribute) of the candidates' stored vectors."""
    attributes = list(weights)
    if single:
        fetch = single_fetch(snap.index, attributes[0], vectors[attributes[0]],
                             ranking.filters, with_scores=with_scores)
    else:
        fetch = weighted_fetch(snap.index, weights, vectors, ranking.filters, ranking.depth,
                               *(rescore or ()))
    return await snap.call(top_hits, snap.index, fetch, ranking.depth, attributes=attributes,
                           group_by=ranking.group_by, max_depth=settings.group_max_depth,
                           exclude_id=exclude_id)


# ---------------------------------------------------------------- answers


_ID_MARKER = "item-id-marker"


def _image_path(app: Starlette) -> tuple[str, str]:
    """The image route's path around its item id, from the route's name; worked out once
    per app (``url_path_for`` walks every route: 10 results cost ~0.8 ms)."""
    parts: tuple[str, str] | None = getattr(app.state, "image_path", None)
    if parts is None:
        before, _, after = app.url_path_for("get_item_image", item_id=_ID_MARKER).partition(
            _ID_MARKER)
        parts = app.state.image_path = (before, after)
    return parts


def image_url(request: Request, item_id: str) -> str:
    """Relative URL of an item's image (behind ASEN_ROOT_PATH too): the id percent-encoded
    whole, ``/`` included, so that any id round-trips."""
    before, after = _image_path(request.app)
    return f"{request.scope.get('root_path', '')}{before}{quote(item_id, safe='')}{after}"


def result_items(hits: Ranked, request: Request) -> list[ResultItem]:
    """Result items from ranked hits (hit, group value), best first."""
    return [ResultItem(rank=n, id=hit.item.id, score=float(hit.score),
                       scores={a: float(v) for a, v in hit.scores.items()} or None,
                       metadata=dict(hit.item.metadata), tags=tag_infos(hit.item.tags),
                       image_url=image_url(request, hit.item.id), group=group)
            for n, (hit, group) in enumerate(hits, start=1)]


def search_response(request: Request, snap: Snapshot, query: QueryInfo, hits: Ranked,
                    timings: Timings, ranking: Ranking | None = None) -> SearchResponse:
    """The answer of a search endpoint: the top ``query.k`` of ``hits`` (ranked to
    ``ranking.depth``) and, when ``ranking`` asks for them, the facets of its top N."""
    facets = None
    if ranking is not None:
        query = query.model_copy(update={"min_confidence": ranking.min_confidence,
                                         "facets": ranking.facets})
        if ranking.facets is not None:
            top = [hit.item for hit, _ in hits[:ranking.facets]]
            facets = item_facets(top, tagged_attributes(snap.index),
                                 ranking.min_confidence or 0.0)
    shown = hits if query.k is None else hits[:query.k]
    return SearchResponse(query=query, results=result_items(shown, request), facets=facets,
                          timings=timings, model=snap.model, index_version=snap.version)


@dataclass
class EmbedCost:
    """What embedding the uploads of a request cost."""

    decode_ms: float
    queue_ms: float
    embed_ms: float
    batch_size: int


def record(request: Request, timings: Timings, **stages: float | None) -> Timings:
    """Hand a request's stage timings to the metrics: RequestContextMiddleware observes
    them when the request is answered (``stages`` adds or overrides stages)."""
    request.state.stages = {"decode": timings.decode_ms, "queue": timings.queue_ms,
                            "embed": timings.embed_ms, "search": timings.search_ms, **stages}
    return timings


def search_timings(request: Request, start: float, search_ms: float,
                   cost: EmbedCost | None = None) -> Timings:
    """The timings of a search that started at ``start`` (with its uploads' embedding
    ``cost`` if it had any), recorded for the metrics."""
    if cost is None:
        return record(request, Timings(search_ms=search_ms, total_ms=ms_since(start)))
    return record(request, Timings(
        decode_ms=cost.decode_ms, queue_ms=round(cost.queue_ms, 3),
        embed_ms=round(cost.embed_ms, 3), search_ms=search_ms, total_ms=ms_since(start),
        batch_size=cost.batch_size))


# ---------------------------------------------------------------- uploads


@dataclass
class EmbeddedUploads(EmbedCost):
    """Uploaded images embedded for their attributes: per upload, attribute -> vector."""

    vectors: list[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass
class EmbeddedUpload(EmbedCost):
    """One uploaded image embedded for some attributes: attribute -> vector."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)


async def _prepared(upload: UploadFile, settings: Settings, snap: Snapshot) -> PreparedImage:
    return await prepare_image(await read_upload(upload, settings), settings,
                               snap.embedder.preprocess)


async def embed_uploads(state: ServiceState, snap: Snapshot, slot: Slot,
                        uploads: Sequence[UploadFile], attributes: Sequence[Sequence[str]],
                        settings: Settings) -> EmbeddedUploads:
    """Read, decode and preprocess the uploads (in the decode pool), then embed each one for
    its attributes through the micro-batcher: one global-trunk pass per image. A lone
    upload of a lone request is decoded on the inference thread instead (one hand-off)."""
    t = time.perf_counter()
    images: list[PreparedImage | Deferred]
    if len(uploads) == 1 and state.batcher.alone():
        data = await read_upload(uploads[0], settings)
        images = [deferred_image(data, settings, snap.embedder.preprocess)]
    else:
        images = list(await asyncio.gather(*(_prepared(u, settings, snap) for u in uploads)))
    read_ms = ms_since(t)
    results = await state.batcher.embed(slot, snap.embedder,
                                        list(zip(images, attributes, strict=True)))
    return EmbeddedUploads(
        vectors=[dict(zip(attrs, r.vectors, strict=True))
                 for attrs, r in zip(attributes, results, strict=True)],
        decode_ms=round(read_ms + max(r.prepare_ms for r in results), 3),
        queue_ms=max(r.queue_ms for r in results),
        embed_ms=max(r.embed_ms for r in results), batch_size=max(r.batch_size for r in results))


async def embed_upload(state: ServiceState, snap: Snapshot, slot: Slot, upload: UploadFile,
                       settings: Settings, attributes: list[str]) -> EmbeddedUpload:
    """Read, decode and embed one upload for ``attributes`` (one trunk pass)."""
    up = await embed_uploads(state, snap, slot, [upload], [attributes], settings)
    return EmbeddedUpload(vectors=up.vectors[0], decode_ms=up.decode_ms, queue_ms=up.queue_ms,
                          embed_ms=up.embed_ms, batch_size=up.batch_size)
