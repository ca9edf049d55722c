"""Re-ranking another system's candidates by attribute-specific similarity."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request

from ..deps import SettingsDep, StateDep
from ..errors import ApiError, error_responses
from ..query import (
    EmbedCost,
    admitted,
    embed_upload,
    ms_since,
    normalise_weights,
    record,
    result_items,
)
from ..ranking import rerank
from ..schemas import MAX_CANDIDATES, QueryInfo, RerankForm, RerankResponse, Timings
from ..state import Snapshot, require_attribute
from ..uploads import parse_json_list, parse_json_object
from . import V1
from .search import MULTIPART

router = APIRouter(prefix=V1, tags=["search"])

MAX_ID_LENGTH = 512


def parse_candidates(raw: str) -> list[str]:
    """Candidate ids: a JSON array of at most 1000 strings (integers are taken as text)."""
    values = parse_json_list(raw, "candidates")
    if len(values) > MAX_CANDIDATES:
        raise ApiError(422, "validation_error",
                       f"candidates: at most {MAX_CANDIDATES} ids, got {len(values)}",
                       details=[{"loc": ["body", "candidates"], "msg": "too many ids",
                                 "type": "too_long"}])
    out: list[str] = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (str, int)) \
                or not 0 < len(str(value)) <= MAX_ID_LENGTH:
            raise ApiError(422, "validation_error",
                           f"candidates.{i}: must be an id (a non-empty string)",
                           details=[{"loc": ["body", "candidates", str(i)],
                                     "msg": "must be a non-empty string", "type": "string_type"}])
        out.append(str(value))
    return out


async def _stored_query(snap: Snapshot, item_id: str, attributes: list[str]
                        ) -> dict[str, np.ndarray]:
    items, stored = await snap.call(snap.index.embeddings, [item_id], attributes)
    if not items:
        raise ApiError(404, "item_not_found", f"no item with id {item_id!r}",
                       details={"item_id": item_id})
    return {a: stored[a][0] for a in attributes}


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
) -> RerankResponse:
    """Order `candidates` (up to 1000 catalog ids, e.g. another search engine's hits) by
    their similarity to the query (an uploaded `image` or an indexed `item_id`) on
    `attribute`, or on several `weights`. Scores come from the stored embeddings: one query
    embedding plus one dot product per candidate, whatever the index type. Ids that are not
    in the catalog are listed in `unknown`; they never fail the request."""
    start = time.perf_counter()
    group_by = form.group_by or None  # an empty field: no grouping
    if (form.image is None) == (not form.item_id):
        raise ApiError(422, "validation_error", "give exactly one of image or item_id")
    if (form.attribute is None) == (form.weights is None):
        raise ApiError(422, "validation_error", "give exactly one of attribute or weights")
    candidates = parse_candidates(form.candidates)
    raw_weights = parse_json_object(form.weights, "weights") if form.weights is not None else {}
    async with state.lease() as snap:
        if form.attribute is not None:
            weights = {require_attribute(snap, form.attribute): 1.0}
        else:
            weights = normalise_weights(raw_weights, snap)
        attributes = list(weights)
        cost: EmbedCost | None = None
        if form.image is not None:
            async with admitted(state) as slot:
                up = await embed_upload(state, snap, slot, form.image, settings, attributes)
            vectors, cost = up.vectors, up
        else:
            vectors = await _stored_query(snap, form.item_id or "", attributes)
        t = time.perf_counter()
        hits, unknown = await snap.call(
            lambda: rerank(snap.index, weights, vectors, candidates,
                           single=form.attribute is not None, group_by=group_by))
        search_ms = ms_since(t)
        timings = record(request, cost.timings(search_ms, start) if cost is not None
                         else Timings(search_ms=search_ms, total_ms=ms_since(start)))
        return RerankResponse(
            query=QueryInfo(source="upload" if form.image is not None else "item",
                            item_id=form.item_id or None, attribute=form.attribute,
                            weights=None if form.attribute is not None else weights,
                            k=None, group_by=group_by),
            results=result_items(hits, request), unknown=unknown,
            timings=timings, model=snap.model, index_version=snap.version,
        )
