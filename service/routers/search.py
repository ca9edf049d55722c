"""Search endpoints: by uploaded image, by indexed item, and on several attributes at once."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Request, UploadFile

from ..deps import MULTIPART, SettingsDep, SnapshotDep, StateDep, StoredDep
from ..errors import error_responses
from ..query import (
    Ranking,
    admitted,
    embed_upload,
    ms_since,
    rank,
    search_response,
    search_timings,
    served_weights,
)
from ..schemas import ImageSearchForm, ItemSearchRequest, MultiSearchForm, QueryInfo, SearchResponse
from ..settings import Settings
from ..state import ServiceState, Snapshot, require_attribute
from . import V1

router = APIRouter(prefix=f"{V1}/search", tags=["search"])


async def _by_upload(request: Request, state: ServiceState, snap: Snapshot, settings: Settings,
                     image: UploadFile, weights: dict[str, float], ranking: Ranking, *,
                     single: bool) -> SearchResponse:
    """Embed the upload for the attributes of ``weights`` and rank (``single``: the one
    attribute's index)."""
    start = time.perf_counter()
    async with admitted(state) as slot:
        up = await embed_upload(state, snap, slot, image, settings, list(weights))
        t = time.perf_counter()
        hits = await rank(snap, settings, weights, up.vectors, ranking, single=single)
        timings = search_timings(request, start, ms_since(t), up)
    query = QueryInfo(source="upload", attribute=next(iter(weights)) if single else None,
                      weights=None if single else weights, k=ranking.k,
                      filters=dict(ranking.filters or {}), group_by=ranking.group_by)
    return search_response(request, snap, query, hits, timings)


@router.post(
    "",
    response_model=SearchResponse,
    summary="Search by uploaded image",
    responses=error_responses(401, 413, 415, 422, 503),
)
async def search_by_image(
    request: Request,
    form: Annotated[ImageSearchForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
) -> SearchResponse:
    """Catalog items whose `attribute` looks most like the uploaded image's."""
    ranking = Ranking.of(form.k, form.filters, form.group_by, settings)
    attribute = require_attribute(snap, form.attribute)
    return await _by_upload(request, state, snap, settings, form.image, {attribute: 1.0},
                            ranking, single=True)


@router.post(
    "/multi",
    response_model=SearchResponse,
    summary="Search by uploaded image on several weighted attributes",
    responses=error_responses(401, 413, 415, 422, 503),
)
async def search_multi(
    request: Request,
    form: Annotated[MultiSearchForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
) -> SearchResponse:
    """Rank by the weighted sum of per-attribute similarities (weights normalised to sum 1).
    The image goes through the model's global trunk once for all its attributes."""
    ranking = Ranking.of(form.k, form.filters, form.group_by, settings)
    weights = served_weights(form.weights, snap)
    return await _by_upload(request, state, snap, settings, form.image, weights, ranking,
                            single=False)


@router.post(
    "/by-item",
    response_model=SearchResponse,
    summary="Search with an indexed item's stored embedding",
    responses=error_responses(401, 404, 422, 503),
)
async def search_by_item(
    request: Request,
    body: ItemSearchRequest,
    settings: SettingsDep,
    snap: SnapshotDep,
    stored: StoredDep,
) -> SearchResponse:
    """No upload: the item's embedding from the index is the query. Give `attribute` or
    `weights`; the item itself is left out of the results unless `include_self`."""
    start = time.perf_counter()
    ranking = Ranking.of(body.k, body.filters, body.group_by, settings)
    if body.attribute is not None:
        weights = {require_attribute(snap, body.attribute): 1.0}
    else:
        weights = served_weights(body.weights or {}, snap)
    t = time.perf_counter()
    vectors = await stored.vectors(body.item_id, list(weights))
    hits = await rank(snap, settings, weights, vectors, ranking,
                      single=body.attribute is not None,
                      exclude_id=None if body.include_self else body.item_id)
    search_ms = ms_since(t)
    query = QueryInfo(source="item", item_id=body.item_id, attribute=body.attribute,
                      weights=None if body.attribute is not None else weights, k=ranking.k,
                      filters=dict(ranking.filters or {}), group_by=ranking.group_by)
    timings = search_timings(request, start, search_ms)
    return search_response(request, snap, query, hits, timings)
