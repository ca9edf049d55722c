"""Explain: where the model looks in an image for an attribute."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from ..deps import SettingsDep, StateDep
from ..errors import ApiError, error_responses
from ..heatmap import centre_crop_region, render_overlay
from ..protocols import EmbedderLike
from ..query import admitted, ms_since, record
from ..schemas import Box, ExplainForm, ExplainResponse, Timings
from ..state import require_attribute
from ..uploads import item_image, prepare_image, read_upload
from . import V1

router = APIRouter(prefix=V1, tags=["explain"])


def _with_input(embedder: EmbedderLike) -> Callable[[Image.Image], tuple[Image.Image, Any]]:
    """Decoded image -> (it, its model input): the overlay needs both."""
    return lambda image: (image, embedder.preprocess(image))


def _box(rect: tuple | None) -> Box | None:
    if rect is None:
        return None
    x0, y0, x1, y1 = (int(round(float(v))) for v in rect)
    return Box(x0=x0, y0=y0, x1=x1, y1=y1)


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
    form: Annotated[ExplainForm, Form(media_type="multipart/form-data")],
    settings: SettingsDep,
    state: StateDep,
    format: Annotated[Literal["json", "png"], Query(
        description="json, or png for the overlay")] = "json",
) -> ExplainResponse | Response:
    """The attribute-aware spatial attention of the global branch over the image (as data
    and as a PNG overlay) and the box the local branch zoomed into."""
    start = time.perf_counter()
    has_image = form.image is not None
    if has_image == bool(form.item_id):
        raise ApiError(422, "validation_error", "give exactly one of image or item_id")
    async with state.lease() as snap:
        attribute = require_attribute(snap, form.attribute)
        async with admitted(state) as slot:
            slot.submitted()  # explain does not join a micro-batch: nobody should wait for it
            t = time.perf_counter()
            if form.image is not None:
                image, prep = await prepare_image(await read_upload(form.image, settings),
                                                  settings, _with_input(snap.embedder))
            else:
                item = await snap.call(snap.index.get, form.item_id)
                if item is None:
                    raise ApiError(404, "item_not_found", f"no item with id {form.item_id!r}",
                                   details={"item_id": form.item_id})
                image = await item_image(item, settings)
                prep = await run_in_threadpool(snap.embedder.preprocess, image)
            decode_ms = ms_since(t)
            t = time.perf_counter()
            expl = await state.batcher.run(snap.embedder.explain_prepared, prep, attribute)
            embed_ms = ms_since(t)
        region = getattr(expl, "crop_box", None) or centre_crop_region(*image.size)
        region_box = _box(region)
        box = _box(expl.box)
        attention = np.asarray(expl.attention, dtype=np.float32)
        png = await run_in_threadpool(
            render_overlay, image, attention,
            (region_box.x0, region_box.y0, region_box.x1, region_box.y1),
            None if box is None else (box.x0, box.y0, box.x1, box.y1),
        )
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
            attention_region=region_box, box=box,
            overlay_png=base64.b64encode(png).decode("ascii"),
            timings=timings,
            model=snap.model, index_version=snap.version,
        )
