"""Explain: where the model looks in an image for an attribute."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..deps import MULTIPART, SettingsDep, SnapshotDep, StateDep, StoredDep
from ..errors import error_responses
from ..heatmap import Rect, centre_crop_region, render_overlay
from ..query import admitted, ms_since, record
from ..schemas import Box, ExplainForm, ExplainResponse, Timings
from ..settings import Settings
from ..state import Snapshot, require_attribute
from ..uploads import item_image, prepare_image, read_upload
from . import V1

if TYPE_CHECKING:
    from model.preprocess import PreparedImage

router = APIRouter(prefix=V1, tags=["explain"])


def _box(rect: Sequence[float]) -> Box:
    x0, y0, x1, y1 = (int(round(float(v))) for v in rect)
    return Box(x0=x0, y0=y0, x1=x1, y1=y1)


def _rect(box: Box) -> Rect:
    return (box.x0, box.y0, box.x1, box.y1)


async def _decoded(form: ExplainForm, snap: Snapshot, settings: Settings, stored: StoredDep
                   ) -> tuple[Image.Image, PreparedImage]:
    """The image to explain (the upload or the item's) and its model input: the overlay
    needs both."""
    embedder = snap.embedder
    if form.image is not None:
        data = await read_upload(form.image, settings)
        return await prepare_image(data, settings,
                                   lambda image: (image, embedder.preprocess(image)))
    assert form.item_id is not None   # the form's validator: exactly one of the two
    image = await item_image(await stored.item(form.item_id), settings, snap)
    return image, await run_in_threadpool(embedder.preprocess, image)


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Attention heat-map and RoI box for an attribute",
    responses={
        200: {"content": {"image/png": {}},
              "description": "JSON by default; the overlay PNG itself with format=png."},
        **error_responses(401, 404, 413, 415, 422, 503),
    },
)
async def explain(
    request: Request,
    form: Annotated[ExplainForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
    stored: StoredDep,
    format: Annotated[Literal["json", "png"], Query(
        description="json, or png for the overlay")] = "json",
) -> ExplainResponse | Response:
    """The attribute-aware spatial attention of the global branch over the image (as data
    and as a PNG overlay) and the box the local branch zoomed into."""
    start = time.perf_counter()
    attribute = require_attribute(snap, form.attribute)
    async with admitted(state) as slot:
        slot.submitted()  # explain does not join a micro-batch: nobody should wait for it
        t = time.perf_counter()
        image, prep = await _decoded(form, snap, settings, stored)
        decode_ms = ms_since(t)
        t = time.perf_counter()
        expl = await state.batcher.run(snap.embedder.explain_prepared, prep, attribute)
        embed_ms = ms_since(t)
    region = _box(expl.crop_box or centre_crop_region(*image.size))
    box = None if expl.box is None else _box(expl.box)
    attention = np.asarray(expl.attention, dtype=np.float32)
    png = await run_in_threadpool(render_overlay, image, attention, _rect(region),
                                  None if box is None else _rect(box))
    timings = record(request, Timings(decode_ms=decode_ms, embed_ms=embed_ms,
                                      total_ms=ms_since(start), batch_size=1),
                     embed=None, explain=embed_ms)
    if format == "png":
        headers = {"Cache-Control": "no-store", "X-Index-Version": snap.version}
        if box is not None:
            headers["X-RoI-Box"] = f"{box.x0},{box.y0},{box.x1},{box.y1}"
        return Response(png, media_type="image/png", headers=headers)
    return ExplainResponse(
        attribute=attribute,
        image_size=(int(image.width), int(image.height)),
        attention=[[round(float(v), 6) for v in row] for row in attention],
        attention_region=region, box=box,
        overlay_png=base64.b64encode(png).decode("ascii"),
        timings=timings, model=snap.model, index_version=snap.version,
    )
