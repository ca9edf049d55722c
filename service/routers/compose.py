"""Composed queries: each attribute taken from its own reference (an upload or an item)."""

from __future__ import annotations

import math
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError

from ..deps import SettingsDep, StateDep
from ..errors import ApiError, clean_validation_errors, error_responses
from ..query import admitted, check_k, embed_uploads, ms_since, record, result_items
from ..ranking import Reference, combine, index_limit, single_fetch, top_hits, weighted_fetch
from ..schemas import (
    MAX_REFERENCES,
    ComposeForm,
    ComposeReference,
    QueryInfo,
    ReferenceInfo,
    SearchResponse,
    Timings,
)
from ..state import Snapshot, require_attribute
from ..uploads import parse_filters, parse_json_list
from . import V1
from .search import MULTIPART

router = APIRouter(prefix=f"{V1}/search", tags=["search"])

_REFERENCES = TypeAdapter(list[ComposeReference])


def parse_references(raw: str, n_images: int) -> list[ComposeReference]:
    """The references (1..16, each naming an upload in range or an item); 422 otherwise."""
    value = parse_json_list(raw, "references")
    try:
        refs = _REFERENCES.validate_python(value)
    except ValidationError as exc:
        details = clean_validation_errors(exc.errors())
        raise ApiError(422, "validation_error", "references: " + "; ".join(
            f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5]),
            details=details) from exc
    if not 1 <= len(refs) <= MAX_REFERENCES:
        raise ApiError(422, "validation_error",
                       f"references: give 1 to {MAX_REFERENCES} references")
    for i, ref in enumerate(refs):
        if ref.image is not None and ref.image >= n_images:
            raise ApiError(422, "validation_error",
                           f"references.{i}.image: {ref.image} but {n_images} image(s) uploaded",
                           details=[{"loc": ["body", "references", str(i), "image"],
                                     "msg": "no such upload", "type": "image_position"}])
    unused = sorted(set(range(n_images)) - {r.image for r in refs if r.image is not None})
    if unused:
        raise ApiError(422, "validation_error",
                       f"images {unused} are uploaded but no reference names them")
    top = max(r.weight for r in refs)
    if top <= 0:
        raise ApiError(422, "validation_error", "references: at least one weight must be > 0")
    total = math.fsum(r.weight / top for r in refs)   # scaled first: no overflow
    return [r.model_copy(update={"weight": r.weight / top / total}) for r in refs]


async def _item_vectors(snap: Snapshot, refs: list[ComposeReference]
                        ) -> dict[int, np.ndarray]:
    """Stored vectors of the item references, by reference position; 404 for an unknown id."""
    out = {}
    for i, ref in enumerate(refs):
        if ref.item_id is None:
            continue
        items, stored = await snap.call(snap.index.embeddings, [ref.item_id], [ref.attribute])
        if not items:
            raise ApiError(404, "item_not_found", f"no item with id {ref.item_id!r}",
                           details={"item_id": ref.item_id})
        out[i] = stored[ref.attribute][0]
    return out


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
) -> SearchResponse:
    """Rank by the weighted sum of per-attribute similarities, each attribute's query taken
    from its reference: an uploaded image (`images`, by position) or an indexed item (its
    stored embedding), e.g. the neckline of upload 0 with weight 0.6 and the colour of item
    `sku-42` with 0.4. Weights are normalised to sum to 1. Each upload goes through the
    model's global trunk once for all the attributes that reference it. With one reference
    the answer is that of the plain search (`/v1/search` or `/v1/search/by-item` with
    `include_self`); reference items are not left out of the results."""
    start = time.perf_counter()
    group_by = form.group_by or None  # an empty field: no grouping
    k = check_k(form.k, settings)
    filters = parse_filters(form.filters)
    images = list(form.images or [])
    refs = parse_references(form.references, len(images))
    async with state.lease() as snap:
        for ref in refs:
            require_attribute(snap, ref.attribute)
        vectors: dict[int, np.ndarray] = await _item_vectors(snap, refs)
        cost = None
        wanted = {i: sorted({r.attribute for r in refs if r.image == i and r.weight > 0})
                  for i in range(len(images))}
        embed = [i for i, attrs in wanted.items() if attrs]   # weight-0 uploads: not read
        if embed:
            async with admitted(state) as slot:
                cost = await embed_uploads(state, snap, slot, [images[i] for i in embed],
                                           [wanted[i] for i in embed], settings)
            by_image = dict(zip(embed, cost.vectors, strict=True))
            for i, ref in enumerate(refs):
                if ref.image is not None and ref.weight > 0:
                    vectors[i] = by_image[ref.image][ref.attribute]
        weights, queries = combine([Reference(r.attribute, r.weight, vectors[i])
                                    for i, r in enumerate(refs) if r.weight > 0])
        attributes = list(weights)
        t = time.perf_counter()
        if len(attributes) == 1:
            fetch = single_fetch(snap.index, attributes[0], queries[attributes[0]],
                                 filters or None, with_scores=True)
        else:
            fetch = weighted_fetch(snap.index, weights, queries, filters or None, k)
        hits = await snap.call(
            lambda: top_hits(snap.index, fetch, k, group_by=group_by,
                             limit=index_limit(snap.index, attributes),
                             max_depth=settings.group_max_depth))
        search_ms = ms_since(t)
        timings = record(request, cost.timings(search_ms, start) if cost is not None
                         else Timings(search_ms=search_ms, total_ms=ms_since(start)))
        return SearchResponse(
            query=QueryInfo(source="compose", weights=weights, k=k, filters=filters,
                            group_by=group_by,
                            references=[ReferenceInfo(**r.model_dump()) for r in refs]),
            results=result_items(hits, request),
            timings=timings, model=snap.model, index_version=snap.version,
        )
