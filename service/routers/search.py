"""Search endpoints: by uploaded image, by indexed item, and on several attributes at once."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Form, Request

from ..deps import SettingsDep, StateDep
from ..errors import ApiError, error_responses
from ..query import (
    admitted,
    check_k,
    embed_upload,
    ms_since,
    normalise_weights,
    record,
    result_items,
)
from ..ranking import index_limit, single_fetch, top_hits, weighted_fetch
from ..schemas import (
    ImageSearchForm,
    ItemSearchRequest,
    MultiSearchForm,
    QueryInfo,
    SearchResponse,
    Timings,
)
from ..state import require_attribute
from ..uploads import parse_filters, parse_json_object
from . import V1

router = APIRouter(prefix=f"{V1}/search", tags=["search"])

MULTIPART = Form(media_type="multipart/form-data")


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
) -> SearchResponse:
    """Catalog items whose `attribute` looks most like the uploaded image's."""
    start = time.perf_counter()
    group_by = form.group_by or None  # an empty field: no grouping
    k = check_k(form.k, settings)
    filters = parse_filters(form.filters)
    async with state.lease() as snap:
        attribute = require_attribute(snap, form.attribute)
        async with admitted(state) as slot:
            up = await embed_upload(state, snap, slot, form.image, settings, [attribute])
            t = time.perf_counter()
            fetch = single_fetch(snap.index, attribute, up.vectors[attribute], filters or None)
            hits = await snap.call(
                lambda: top_hits(snap.index, fetch, k, group_by=group_by,
                                 limit=snap.index.size(attribute),
                                 max_depth=settings.group_max_depth))
            timings = record(request, up.timings(ms_since(t), start))
        return SearchResponse(
            query=QueryInfo(source="upload", attribute=attribute, k=k, filters=filters,
                            group_by=group_by),
            results=result_items(hits, request),
            timings=timings, model=snap.model, index_version=snap.version,
        )


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
) -> SearchResponse:
    """Rank by the weighted sum of per-attribute similarities (weights normalised to sum 1).
    The image goes through the model's global trunk once for all its attributes."""
    start = time.perf_counter()
    group_by = form.group_by or None  # an empty field: no grouping
    k = check_k(form.k, settings)
    filters = parse_filters(form.filters)
    raw_weights = parse_json_object(form.weights, "weights")
    async with state.lease() as snap:
        weights = normalise_weights(raw_weights, snap)
        async with admitted(state) as slot:
            up = await embed_upload(state, snap, slot, form.image, settings, list(weights))
            t = time.perf_counter()
            fetch = weighted_fetch(snap.index, weights, up.vectors, filters or None, k)
            hits = await snap.call(
                lambda: top_hits(snap.index, fetch, k, group_by=group_by,
                                 limit=index_limit(snap.index, list(weights)),
                                 max_depth=settings.group_max_depth))
            timings = record(request, up.timings(ms_since(t), start))
        return SearchResponse(
            query=QueryInfo(source="upload", weights=weights, k=k, filters=filters,
                            group_by=group_by),
            results=result_items(hits, request),
            timings=timings, model=snap.model, index_version=snap.version,
        )


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
    state: StateDep,
) -> SearchResponse:
    """No upload: the item's embedding from the index is the query. Give `attribute` or
    `weights`; the item itself is left out of the results unless `include_self`."""
    start = time.perf_counter()
    group_by = body.group_by or None  # an empty field: no grouping
    k = check_k(body.k, settings)
    filters = parse_filters(body.filters or {})
    if (body.attribute is None) == (body.weights is None):
        raise ApiError(422, "validation_error", "give exactly one of attribute or weights")
    async with state.lease() as snap:
        if body.attribute is not None:
            attributes = [require_attribute(snap, body.attribute)]
            weights = None
        else:
            weights = normalise_weights(dict(body.weights or {}), snap)
            attributes = list(weights)
        t = time.perf_counter()
        items, stored = await snap.call(snap.index.embeddings, [body.item_id], attributes)
        if not items:
            raise ApiError(404, "item_not_found", f"no item with id {body.item_id!r}",
                           details={"item_id": body.item_id})
        vectors = {a: stored[a][0] for a in attributes}
        if weights is None:
            fetch = single_fetch(snap.index, attributes[0], vectors[attributes[0]],
                                 filters or None)
        else:
            fetch = weighted_fetch(snap.index, weights, vectors, filters or None, k)
        exclude = None if body.include_self else body.item_id
        hits = await snap.call(
            lambda: top_hits(snap.index, fetch, k, group_by=group_by,
                             limit=index_limit(snap.index, attributes),
                             max_depth=settings.group_max_depth, exclude_id=exclude))
        search_ms = ms_since(t)
        return SearchResponse(
            query=QueryInfo(source="item", item_id=body.item_id, attribute=body.attribute,
                            weights=weights, k=k, filters=filters, group_by=group_by),
            results=result_items(hits, request),
            timings=record(request, Timings(search_ms=search_ms, total_ms=ms_since(start))),
            model=snap.model, index_version=snap.version,
        )
