"""Composed queries: each attribute taken from its own reference (an upload, an item or a
value's prototype)."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request

from ..deps import MULTIPART, SettingsDep, SnapshotDep, StateDep, StoredDep
from ..errors import error_responses
from ..query import (
    EmbedCost,
    Ranking,
    admitted,
    embed_uploads,
    ms_since,
    rank,
    search_response,
    search_timings,
)
from ..ranking import Reference, combine
from ..schemas import ComposeForm, QueryInfo, ReferenceInfo, SearchResponse
from ..settings import Settings
from ..state import ServiceState, Snapshot, require_attribute
from ..values import require_values
from . import V1

router = APIRouter(prefix=f"{V1}/search", tags=["search"])


async def _upload_vectors(state: ServiceState, snap: Snapshot, settings: Settings,
                          form: ComposeForm) -> tuple[dict[int, np.ndarray], EmbedCost | None]:
    """The query vectors of the upload references, by reference position, and what
    embedding them cost (None: nothing to embed). Uploads only weight-0 references name are
    not read."""
    refs = form.references
    wanted = {i: sorted({r.attribute for r in refs if r.image == i and r.weight > 0})
              for i in range(len(form.images))}
    embed = [i for i, attrs in wanted.items() if attrs]
    if not embed:
        return {}, None
    async with admitted(state) as slot:
        cost = await embed_uploads(state, snap, slot, [form.images[i] for i in embed],
                                   [wanted[i] for i in embed], settings)
    by_image = dict(zip(embed, cost.vectors, strict=True))
    return {i: by_image[ref.image][ref.attribute] for i, ref in enumerate(refs)
            if ref.image is not None and ref.weight > 0}, cost


def _value_references(snap: Snapshot, form: ComposeForm) -> tuple[dict[int, np.ndarray],
                                                                  list[ReferenceInfo]]:
    """The prototype of each value reference, by position (422 for an attribute or value
    the value space lacks, listing the known ones; other references: the served attribute
    or 422), and every reference as used (values as the value space names them)."""
    vectors, used = {}, []
    for i, ref in enumerate(form.references):
        info = ReferenceInfo(**ref.model_dump())
        if ref.value is None:
            require_attribute(snap, ref.attribute)
        else:
            proto = require_values(snap.values, ref.attribute).prototype(ref.attribute,
                                                                         ref.value)
            vectors[i] = proto.vector
            info.value = proto.name
        used.append(info)
    return vectors, used


@router.post(
    "/compose",
    response_model=SearchResponse,
    summary="Composed query: each attribute from its own reference",
    responses=error_responses(401, 404, 413, 415, 422, 503),
)
async def search_compose(
    request: Request,
    form: Annotated[ComposeForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
    stored: StoredDep,
) -> SearchResponse:
    """Rank by the weighted sum of per-attribute similarities, each attribute's query taken
    from its reference: an uploaded image (`images`, by position), an indexed item (its
    stored embedding) or a value of the attribute (its prototype: `{"attribute": "neckline",
    "value": "v"}`), e.g. the neckline of upload 0 with weight 0.6 and the colour of item
    `sku-42` with 0.4. Weights are normalised to sum to 1. Each upload goes through the
    model's global trunk once for all the attributes that reference it. With one reference
    the answer is that of the plain search (`/v1/search` or `/v1/search/by-item` with
    `include_self`); reference items are not left out of the results."""
    start = time.perf_counter()
    ranking = Ranking.of(form.k, form.filters, form.group_by, settings,
                         form.min_confidence, form.facets)
    refs = form.references
    vectors, used = _value_references(snap, form)
    by_item = [(i, (ref.item_id, ref.attribute)) for i, ref in enumerate(refs)
               if ref.item_id is not None]
    found = await stored.reference_vectors([pair for _, pair in by_item])   # one index call
    vectors.update((i, v) for (i, _), v in zip(by_item, found, strict=True))
    uploaded, cost = await _upload_vectors(state, snap, settings, form)
    vectors.update(uploaded)
    weights, queries = combine([Reference(r.attribute, r.weight, vectors[i])
                                for i, r in enumerate(refs) if r.weight > 0])
    t = time.perf_counter()
    hits = await rank(snap, settings, weights, queries, ranking, single=len(weights) == 1,
                      with_scores=True)
    timings = search_timings(request, start, ms_since(t), cost)
    query = QueryInfo(source="compose", weights=weights, k=ranking.k,
                      filters=dict(ranking.filters or {}), group_by=ranking.group_by,
                      references=used)
    return search_response(request, snap, query, hits, timings, ranking)
