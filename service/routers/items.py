"""Catalog items: list, get one, and its image."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from indexer.items import Item

from ..deps import SettingsDep, SnapshotDep, StoredDep
from ..errors import ApiError, error_responses
from ..protocols import CatalogIndexLike
from ..query import image_url
from ..schemas import ItemResponse, ItemsPage
from ..uploads import item_image
from . import V1

router = APIRouter(prefix=f"{V1}/items", tags=["items"])

_CACHE = "private, max-age=300"


async def path_item(item_id: str, stored: StoredDep) -> Item:
    """The item the path names; 404 item_not_found."""
    return await stored.item(item_id)


PathItem = Annotated[Item, Depends(path_item)]


def _response(request: Request, item: Item) -> ItemResponse:
    return ItemResponse(id=item.id, metadata=dict(item.metadata),
                        image_url=image_url(request, item.id))


def _image_file(raw: str, roots: list[Path]) -> tuple[Path, str]:
    """The item's image file and its sniffed media type; ValueError when not servable.

    The path comes from the index, never from the client; it must be a regular image file
    and, when ASEN_IMAGE_ROOTS is set, lie inside one of those folders (symlinks resolved).
    """
    path = Path(raw).resolve(strict=True)
    if not path.is_file():
        raise ValueError("not a regular file")
    if roots and not any(path.is_relative_to(root.resolve()) for root in roots):
        raise ValueError("outside ASEN_IMAGE_ROOTS")
    with Image.open(path) as img:
        mime = Image.MIME.get(img.format or "", "")
    if not mime.startswith("image/"):
        raise ValueError("not an image")
    return path, mime


def _image_roots(roots: list[Path], index: CatalogIndexLike) -> list[Path]:
    """ASEN_IMAGE_ROOTS plus the folders where the index keeps images itself (the live
    changes' uploads); no restriction when ASEN_IMAGE_ROOTS is unset."""
    return [*roots, *index.image_dirs] if roots else []


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
    limit: Annotated[int, Query(ge=1, le=200)] = 24,
) -> ItemsPage:
    """A page of indexed items in index order (for pickers and browsing)."""
    total, items = await snap.call(snap.index.list_items, offset, limit)
    return ItemsPage(items=[_response(request, it) for it in items], total=total,
                     offset=offset, limit=limit, index_version=snap.version)


@router.get("/{item_id}", response_model=ItemResponse, summary="Get an item",
            responses=error_responses(401, 404, 503))
async def get_item(request: Request, item: PathItem) -> ItemResponse:
    """An indexed item's metadata."""
    return _response(request, item)


@router.get(
    "/{item_id}/image",
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
    roots = await snap.call(_image_roots, settings.image_roots, snap.index)
    try:
        path, mime = await run_in_threadpool(_image_file, item.image, roots)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ApiError(404, "image_unavailable", f"the image of item {item.id!r} is not available",
                       details={"item_id": item.id}) from exc
    if max_side is not None:
        img = await item_image(item, settings)
        data = await run_in_threadpool(_thumbnail, img, max_side)
        return Response(data, media_type="image/jpeg", headers=headers)
    return FileResponse(path, media_type=mime, headers=headers)
