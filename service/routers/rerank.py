"""Re-ranking another system's candidates by attribute-specific similarity."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request

from ..deps import MULTIPART, SettingsDep, SnapshotDep, StateDep, StoredDep
from ..errors import error_responses
from ..query import (
    EmbedCost,
    admitted,
    embed_upload,
    ms_since,
    result_items,
    search_timings,
    served_weights,
)
from ..ranking import rerank
from ..schemas import QueryInfo, RerankForm, RerankResponse
from ..state import require_attribute
from . import V1

router = APIRouter(prefix=V1, tags=["search"])


@router.post(
    "/rerank",
    response_model=RerankResponse,
    summary="Re-rank given catalog items by attribute similarity to a query",
    responses=error_responses(401, 404, 413, 415, 422, 503),
)
async def rerank_candidates(
    request: Request,
    form: Annotated[RerankForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
    stored: StoredDep,
) -> RerankResponse:
    """Order `candidates` (up to 1000 catalog ids, e.g. another search engine's hits) by
    their similarity to the query (an uploaded `image` or an indexed `item_id`) on
    `attribute`, or on several `weights`. Scores come from the stored embeddings: one query
    embedding plus one dot product per candidate, whatever the index type. Ids that are not
    in the catalog are listed in `unknown`; they never fail the request."""
    start = time.perf_counter()
    if form.attribute is not None:
        weights = {require_attribute(snap, form.attribute): 1.0}
    else:
        weights = served_weights(form.weights or {}, snap)
    cost: EmbedCost | None = None
    vectors: dict[str, np.ndarray]
    if form.image is not None:
        async with admitted(state) as slot:
            up = await embed_upload(state, snap, slot, form.image, settings, list(weights))
        vectors, cost = up.vectors, up
    else:
        assert form.item_id is not None   # the form's validator: exactly one of the two
        vectors = await stored.vectors(form.item_id, list(weights))
    t = time.perf_counter()
    hits, unknown = await snap.call(rerank, snap.index, weights, vectors, form.candidates,
                                    single=form.attribute is not None, group_by=form.group_by)
    timings = search_timings(request, start, ms_since(t), cost)
    return RerankResponse(
        query=QueryInfo(source="upload" if form.image is not None else "item",
                        item_id=form.item_id, attribute=form.attribute,
                        weights=None if form.attribute is not None else weights,
                        k=None, group_by=form.group_by),
        results=result_items(hits, request), unknown=unknown,
        timings=timings, model=snap.model, index_version=snap.version,
    )
