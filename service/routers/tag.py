"""Tag an upload: every attribute's most probable value, its confidence and the next two."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Request

from ..deps import MULTIPART, SettingsDep, SnapshotDep, StateDep
from ..errors import error_responses
from ..query import admitted, embed_upload, ms_since, search_timings
from ..schemas import TagForm, TagResponse, Timings, UploadTag, ValueConfidence
from ..uploads import prepare_image, read_upload
from ..values import ValueSpace
from . import V1

router = APIRouter(prefix=V1, tags=["tags"])

ALTERNATIVES = 2


def upload_tags(space: ValueSpace, vectors: dict[str, np.ndarray]) -> dict[str, UploadTag]:
    """Each attribute's tag from the upload's embeddings (attribute -> unit vector)."""
    out = {}
    for attribute, vector in vectors.items():
        ranked = space.ranked(attribute, vector)
        best, rest = ranked[0], ranked[1:1 + ALTERNATIVES]
        out[attribute] = UploadTag(
            value=best.value, confidence=best.confidence,
            alternatives=[ValueConfidence(value=r.value, confidence=r.confidence) for r in rest],
            values=space.known()[attribute])
    return out


@router.post(
    "/tag",
    response_model=TagResponse,
    summary="Tag an uploaded image: every attribute's value",
    responses=error_responses(401, 413, 415, 422, 503),
)
async def tag_upload(
    request: Request,
    form: Annotated[TagForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
) -> TagResponse:
    """For every attribute with values: the nearest value prototype in its space, its
    calibrated confidence, the next two values with theirs and every known value. The image
    goes through the model's global trunk once for all attributes. An index and checkpoint
    without value prototypes answer `tags: {}`."""
    start = time.perf_counter()
    space = snap.values
    if space is None:   # still checked as an upload: 413, 415, 422 as usual
        await prepare_image(await read_upload(form.image, settings), settings,
                            snap.embedder.preprocess)
        return TagResponse(tags={}, values_source=None, calibrated=False,
                           timings=Timings(total_ms=ms_since(start)), model=snap.model,
                           index_version=snap.version)
    attributes = [a for a in snap.attributes if a in space.attributes]
    async with admitted(state) as slot:
        up = await embed_upload(state, snap, slot, form.image, settings, attributes)
    t = time.perf_counter()
    tags = upload_tags(space, up.vectors)
    timings = search_timings(request, start, ms_since(t), up)
    return TagResponse(tags=tags, values_source=space.source,
                       calibrated=space.calibration is not None, timings=timings,
                       model=snap.model, index_version=snap.version)
