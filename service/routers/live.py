"""Live catalog changes (admin): put an item (embedded now, searchable at once) or delete one.

The change is written to the journal beside the index (indexer/journal.py) before the
answer, so it survives a restart and every replica on the same index folder sees it on its
next read; `python -m indexer --update` folds it into the next index version.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Protocol, runtime_checkable

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from ..deps import SettingsDep, StateDep, require_admin_key
from ..errors import ApiError, error_responses
from ..query import admitted, embed_upload, image_url
from ..schemas import ItemResponse, LiveChangeResponse, LiveItemForm
from ..state import Snapshot
from ..uploads import parse_json_object, read_upload
from .search import MULTIPART

router = APIRouter(prefix="/v1/admin/items", tags=["admin"],
                   dependencies=[Depends(require_admin_key)])

MAX_METADATA_BYTES = 64 * 1024
RESERVED_KEYS = ("id", "image")

ItemId = Annotated[str, Path(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$",
                             description="The catalog id (no control characters).")]


@runtime_checkable
class LiveIndex(Protocol):
    """What an index needs for live changes (indexer.reader.CatalogIndex has it)."""

    def put_item(self, item_id: str, image: bytes, metadata: dict,
                 vectors: dict[str, Any]) -> tuple[int, bool]: ...

    def delete_item(self, item_id: str) -> int | None: ...


def _metadata(raw: str | None) -> dict[str, Any]:
    meta = parse_json_object(raw, "metadata")
    reserved = [k for k in RESERVED_KEYS if k in meta]
    if reserved:
        raise ApiError(422, "validation_error", f"metadata: {reserved} are reserved keys",
                       details=[{"loc": ["body", "metadata", k], "msg": "reserved key",
                                 "type": "reserved"} for k in reserved])
    if len(json.dumps(meta, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise ApiError(422, "validation_error",
                       f"metadata: at most {MAX_METADATA_BYTES} bytes of JSON",
                       details=[{"loc": ["body", "metadata"], "msg": "too large",
                                 "type": "too_long"}])
    return meta


def _live_index(snap: Snapshot, retry_after: int) -> LiveIndex:
    if not isinstance(snap.index, LiveIndex):
        raise ApiError(503, "live_changes_unavailable",
                       "the served index does not take live changes",
                       headers={"Retry-After": str(retry_after)})
    return snap.index


async def _journal(fn: Any, *args: Any, retry_after: int) -> Any:
    """Run a journal write off the event loop; JournalError becomes a 503."""
    from indexer.live.journal import JournalError

    try:
        return await run_in_threadpool(fn, *args)
    except JournalError as exc:
        raise ApiError(503, "journal_unavailable",
                       f"the live-changes journal cannot be written: {exc}",
                       headers={"Retry-After": str(retry_after)}) from exc


@router.put(
    "/{item_id}",
    response_model=LiveChangeResponse,
    summary="Add or replace a catalog item now",
    responses=error_responses(401, 403, 404, 413, 415, 422, 503),
)
async def put_item(
    request: Request,
    item_id: ItemId,
    form: Annotated[LiveItemForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
) -> LiveChangeResponse:
    """Embed the image for every attribute and make the item searchable at once, replacing
    any item with this id. Durable in the journal beside the index before the answer."""
    metadata = _metadata(form.metadata)
    async with state.lease() as snap:
        index = _live_index(snap, settings.retry_after_s)
        async with admitted(state) as slot:
            up = await embed_upload(state, snap, slot, form.image, settings, snap.attributes)
        await form.image.seek(0)
        data = await read_upload(form.image, settings)
        seq, replaced = await _journal(index.put_item, item_id, data, metadata, up.vectors,
                                       retry_after=settings.retry_after_s)
        return LiveChangeResponse(
            id=item_id, op="put", seq=seq, replaced=replaced,
            item=ItemResponse(id=item_id, metadata=metadata,
                              image_url=image_url(request, item_id)),
            index_version=snap.version)


@router.delete(
    "/{item_id}",
    response_model=LiveChangeResponse,
    summary="Remove a catalog item now",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def delete_item(item_id: ItemId, settings: SettingsDep,
                      state: StateDep) -> LiveChangeResponse:
    """Remove the item from every result at once (404 when no item has this id)."""
    async with state.lease() as snap:
        index = _live_index(snap, settings.retry_after_s)
        seq = await _journal(index.delete_item, item_id, retry_after=settings.retry_after_s)
        if seq is None:
            raise ApiError(404, "item_not_found", f"no item with id {item_id!r}",
                           details={"item_id": item_id})
        return LiveChangeResponse(id=item_id, op="delete", seq=seq, replaced=True,
                                  index_version=snap.version)
