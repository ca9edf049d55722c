"""Search endpoints: by uploaded image, by indexed item, and on several attributes at once."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from ..deps import get_settings, get_state, require_api_key
from ..errors import ApiError, error_responses
from ..query import admitted, check_k, embed_upload, ms_since, normalise_weights, ranked
from ..schemas import (
    ImageSearchForm,
    ItemSearchRequest,
    MultiSearchForm,
    QueryInfo,
    SearchResponse,
    Timings,
)
from ..settings import Settings
from ..state import ServiceState, require_attribute
from ..uploads import parse_filters, parse_json_object

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Depends(require_api_key)])

_MULTIPART = Form(media_type="multipart/form-data")


@router.post(
    "",
    response_model=SearchResponse,
    summary="Search by uploaded image",
    responses=error_responses(401, 413, 415, 422, 503),
)
async def search_by_image(
    request: Request,
    form: Annotated[ImageSearchForm, _MULTIPART],
    settings: Settings = Depends(get_settings),
    state: ServiceState = Depends(get_state),
) -> SearchResponse:
    """Catalog items whose `attribute` looks most like the uploaded image's."""
    start = time.perf_counter()
    k = check_k(form.k, settings)
    filters = parse_filters(form.filters)
    async with state.lease() as snap:
        attribute = require_attribute(snap, form.attribute)
        async with admitted(state) as slot:
            up = await embed_upload(state, snap, slot, form.image, settings, [attribute])
            t = time.perf_counter()
            hits = await snap.call(snap.index.search, attribute, up.vectors[attribute][None, :],
                                   k, filters or None)
            timings = up.timings(ms_since(t), start, state)
        return SearchResponse(
            query=QueryInfo(source="upload", attribute=attribute, k=k, filters=filters),
            results=ranked(hits[0], k, request.scope.get("root_path", "")),
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
    form: Annotated[MultiSearchForm, _MULTIPART],
    settings: Settings = Depends(get_settings),
    state: ServiceState = Depends(get_state),
) -> SearchResponse:
    """Rank by the weighted sum of per-attribute similarities (weights normalised to sum 1)."""
    start = time.perf_counter()
    k = check_k(form.k, settings)
    filters = parse_filters(form.filters)
    raw_weights = parse_json_object(form.weights, "weights")
    async with state.lease() as snap:
        weights = normalise_weights(raw_weights, snap)
        async with admitted(state) as slot:
            up = await embed_upload(state, snap, slot, form.image, settings, list(weights))
            t = time.perf_counter()
            hits = await snap.call(snap.index.search_many, weights, up.vectors, k,
                                   filters or None)
            timings = up.timings(ms_since(t), start, state)
        return SearchResponse(
            query=QueryInfo(source="upload", weights=weights, k=k, filters=filters),
            results=ranked(hits, k, request.scope.get("root_path", "")),
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
    settings: Settings = Depends(get_settings),
    state: ServiceState = Depends(get_state),
) -> SearchResponse:
    """No upload: the item's embedding from the index is the query. Give `attribute` or
    `weights`; the item itself is left out of the results unless `include_self`."""
    start = time.perf_counter()
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
        item = await snap.call(snap.index.get, body.item_id)
        if item is None:
            raise ApiError(404, "item_not_found", f"no item with id {body.item_id!r}",
                           details={"item_id": body.item_id})
        vectors = {}
        for attribute in attributes:
            vec = await snap.call(snap.index.embedding, body.item_id, attribute)
            if vec is None:
                raise ApiError(404, "item_not_found",
                               f"item {body.item_id!r} has no {attribute} embedding")
            vectors[attribute] = vec
        extra = 0 if body.include_self else 1
        exclude = None if body.include_self else body.item_id
        if weights is None:
            attribute = attributes[0]
            hits = (await snap.call(snap.index.search, attribute, vectors[attribute][None, :],
                                    k + extra, filters or None))[0]
        else:
            hits = await snap.call(snap.index.search_many, weights, vectors, k + extra,
                                   filters or None)
        search_ms = ms_since(t)
        state.metrics.observe_stage("search", search_ms)
        return SearchResponse(
            query=QueryInfo(source="item", item_id=body.item_id, attribute=body.attribute,
                            weights=weights, k=k, filters=filters),
            results=ranked(hits, k, request.scope.get("root_path", ""), exclude_id=exclude),
            timings=Timings(search_ms=search_ms, total_ms=ms_since(start)),
            model=snap.model, index_version=snap.version,
        )
