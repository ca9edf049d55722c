"""Search endpoints: by uploaded image, by indexed item, and on several attributes at once."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request, UploadFile

from ..deps import MULTIPART, SettingsDep, SnapshotDep, StateDep, StoredDep, StoredItems
from ..errors import error_responses
from ..facets import tagged_attributes
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
from ..uploads import prepare_image, read_upload
from ..values import ButWith, ButWithQuery
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
    return search_response(request, snap, query, hits, timings, ranking)


async def _but_with_upload(request: Request, state: ServiceState, snap: Snapshot,
                           settings: Settings, image: UploadFile, plan: ButWith,
                           ranking: Ranking) -> SearchResponse:
    """"Like this, but with": the upload embedded for the kept attributes only (one trunk
    pass), the targets' prototypes for the others; ranked by every attribute."""
    start = time.perf_counter()
    async with admitted(state) as slot:
        if plan.kept:
            up = await embed_upload(state, snap, slot, image, settings, plan.kept)
            own, cost = up.vectors, up
        else:   # every attribute set: the upload is only checked
            await prepare_image(await read_upload(image, settings), settings,
                                snap.embedder.preprocess)
            own, cost = {}, None
        t = time.perf_counter()
        bw = plan.query(own, tagged=tagged_attributes(snap.index))
        hits = await rank(snap, settings, bw.weights, bw.vectors,
                          ranking.with_targets(bw.filters), single=False,
                          rescore=(bw.rescore, bw.pool))
        timings = search_timings(request, start, ms_since(t), cost)
    query = QueryInfo(source="upload", weights=bw.weights, but_with=plan.names(), k=ranking.k,
                      filters=dict(ranking.filters or {}), group_by=ranking.group_by)
    return search_response(request, snap, query, hits, timings, ranking)


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
    """Catalog items whose `attribute` looks most like the uploaded image's; with `but_with`
    instead, items like the upload in every attribute but those set to the given values
    ("like this, but with a V-neck")."""
    ranking = Ranking.of(form.k, form.filters, form.group_by, settings,
                         form.min_confidence, form.facets)
    if form.but_with is not None:
        plan = ButWith.of(snap.values, snap.attributes, form.but_with)
        return await _but_with_upload(request, state, snap, settings, form.image, plan,
                                      ranking)
    attribute = require_attribute(snap, form.attribute or "")
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
    ranking = Ranking.of(form.k, form.filters, form.group_by, settings,
                         form.min_confidence, form.facets)
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
    """No upload: the item's embedding from the index is the query. Give `attribute`,
    `weights` or `but_with` (every attribute as the item's but those set to the given
    values); the item itself is left out of the results unless `include_self`."""
    start = time.perf_counter()
    ranking = Ranking.of(body.k, body.filters, body.group_by, settings,
                         body.min_confidence, body.facets)
    t = time.perf_counter()
    weights, vectors, bw = await _item_query(body, snap, stored)
    hits = await rank(snap, settings, weights, vectors,
                      ranking if bw is None else ranking.with_targets(bw.filters),
                      single=body.attribute is not None,
                      exclude_id=None if body.include_self else body.item_id,
                      rescore=None if bw is None else (bw.rescore, bw.pool))
    search_ms = ms_since(t)
    query = QueryInfo(source="item", item_id=body.item_id, attribute=body.attribute,
                      weights=None if body.attribute is not None else weights, k=ranking.k,
                      filters=dict(ranking.filters or {}), group_by=ranking.group_by,
                      but_with=bw.names if bw is not None else None)
    timings = search_timings(request, start, search_ms)
    return search_response(request, snap, query, hits, timings, ranking)


async def _item_query(body: ItemSearchRequest, snap: Snapshot, stored: StoredItems
                      ) -> tuple[dict[str, float], dict[str, np.ndarray], ButWithQuery | None]:
    """Weights and query vectors of a by-item search (with its "but with" query if any):
    only the attributes the query keeps are read from the index."""
    if body.but_with is not None:
        plan = ButWith.of(snap.values, snap.attributes, body.but_with)
        bw = plan.query(await stored.vectors(body.item_id, plan.kept),
                        tagged=tagged_attributes(snap.index), leave_out_same=False)
        return bw.weights, bw.vectors, bw
    if body.attribute is not None:
        weights = {require_attribute(snap, body.attribute): 1.0}
    else:
        weights = served_weights(body.weights or {}, snap)
    return weights, await stored.vectors(body.item_id, list(weights)), None
