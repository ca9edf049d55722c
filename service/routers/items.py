"""Catalog items: list, get one, and its image.

The id is a path parameter that takes any id, `/` included (a folder catalog's ids are
relative paths): sent percent-encoded as one segment (``%2F``) or not, it routes the same.
"""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from indexer.items import Item

from ..deps import ITEM_ID, SettingsDep, SnapshotDep, StoredDep
from ..errors import error_responses
from ..facets import tag_infos
from ..query import image_url
from ..schemas import ItemResponse, ItemsPage
from ..uploads import item_image, item_image_file
from . import V1

router = APIRouter(prefix=f"{V1}/items", tags=["items"])


_CACHE = "private, max-age=300"


async def path_item(item_id: str, stored: StoredDep) -> Item:
    """The item the path names; 404 item_not_found."""
    return await stored.item(item_id)


PathItem = Annotated[Item, Depends(path_item)]


def _response(request: Request, item: Item) -> ItemResponse:
    return ItemResponse(id=item.id, metadata=dict(item.metadata),
                        image_url=image_url(request, item.id), tags=tag_infos(item.tags))


def _thumbnail(img: Image.Image, max_side: int) -> bytes:
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


@router.get("", response_model=ItemsPage, summary="List catalog items",
            responses=error_responses(401, 422, 503))
async def list_items(
    request: Request,
    snap: SnapshotDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page, 1 to 200.")] = 24,
) -> ItemsPage:
    """A page of indexed items in index order (for pickers and browsing)."""
    total, items = await snap.call(snap.index.list_items, offset, limit)
    return ItemsPage(items=[_response(request, it) for it in items], total=total,
                     offset=offset, limit=limit, index_version=snap.version)


@router.get(
    f"/{ITEM_ID}/image",
    summary="Get an item's image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "The image file."},
               **error_responses(401, 404, 422, 503)},
)
async def get_item_image(
    item: PathItem,
    settings: SettingsDep,
    snap: SnapshotDep,
    max_side: Annotated[int | None, Query(
        ge=16, le=2048, description="Downscale to fit this size (JPEG thumbnail).")] = None,
) -> Response:
    """The item's catalog image, or a JPEG thumbnail with `max_side`."""
    headers = {"Cache-Control": _CACHE, "X-Index-Version": snap.version}
    path, mime = await item_image_file(item, settings, snap)
    if max_side is not None:
        img = await item_image(item, settings, snap)
        data = await run_in_threadpool(_thumbnail, img, max_side)
        return Response(data, media_type="image/jpeg", headers=headers)
    return FileResponse(path, media_type=mime, headers=headers)


# After the image route: ITEM_ID matches any path, one ending in /image too (no id
# ends in /image: indexer.catalog.id_problem).
@router.get(f"/{ITEM_ID}", response_model=ItemResponse, summary="Get an item",
            responses=error_responses(401, 404, 503))
async def get_item(request: Request, item: PathItem) -> ItemResponse:
    """An indexed item's metadata and its tag per tagged attribute."""
    return _response(request, item)
