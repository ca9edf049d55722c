"""Live catalog changes (admin): put an item (embedded now, searchable at once) or delete one.

The change is written to the journal beside the index (indexer/live/journal.py) before the
answer, so it survives a restart and every replica on the same index folder sees it on its
next read; `python -m indexer --update` folds it into the next index version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AfterValidator

from indexer.catalog import MAX_ID_LENGTH, id_problem
from indexer.live.journal import JournalError, LiveChangesUnavailable

from ..deps import (
    ITEM_ID,
    MULTIPART,
    SettingsDep,
    SnapshotDep,
    StateDep,
    item_not_found,
    require_admin_key,
)
from ..errors import ApiError, error_responses
from ..facets import tag_infos
from ..query import admitted, embed_upload, image_url
from ..schemas import ItemResponse, LiveChangeResponse, LiveItemForm
from ..state import Snapshot
from ..uploads import read_upload

router = APIRouter(prefix="/v1/admin/items", tags=["admin"],
                   dependencies=[Depends(require_admin_key)])

P = ParamSpec("P")
T = TypeVar("T")

PathItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH,
                                 pattern=r"^[^\x00-\x1f\x7f]+$",
                                 description="The catalog id (no control characters).")]


def _servable(item_id: str) -> str:
    """The id, when every endpoint can address it (indexer.catalog.id_problem)."""
    if (problem := id_problem(item_id)) is not None:
        raise ValueError(f"this id cannot be served: {problem}")
    return item_id


#: an id a PUT may create: the catalogs' rule, so that the item's URLs all reach it
NewItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, description=(
    "The catalog id: any text (`/` included) but blank, `.`, `..`, one ending in `/image` or "
    f"with control characters, at most {MAX_ID_LENGTH} characters.")),
                      AfterValidator(_servable)]


def _unavailable(retry_after: int) -> ApiError:
    return ApiError(503, "live_changes_unavailable", "the served index does not take live changes",
                    headers={"Retry-After": str(retry_after)})


async def _takes_live_changes(snap: Snapshot, retry_after: int) -> None:
    """503 live_changes_unavailable before any work when the index has no journal."""
    if await snap.call(snap.index.live_status) is None:
        raise _unavailable(retry_after)


async def _journal(snap: Snapshot, retry_after: int, fn: Callable[P, T], *args: P.args,
                   **kwargs: P.kwargs) -> T:
    """Run a journal write on the snapshot's index threads; its errors become 503s."""
    try:
        return await snap.call(fn, *args, **kwargs)
    except LiveChangesUnavailable as exc:
        raise _unavailable(retry_after) from exc
    except JournalError as exc:
        raise ApiError(503, "journal_unavailable",
                       f"the live-changes journal cannot be written: {exc}",
                       headers={"Retry-After": str(retry_after)}) from exc


@router.put(
    f"/{ITEM_ID}",
    response_model=LiveChangeResponse,
    summary="Add or replace a catalog item now",
    responses=error_responses(401, 403, 404, 413, 415, 422, 503),
)
async def put_item(
    request: Request,
    item_id: NewItemId,
    form: Annotated[LiveItemForm, MULTIPART],
    settings: SettingsDep,
    state: StateDep,
    snap: SnapshotDep,
) -> LiveChangeResponse:
    """Embed the image for every attribute and make the item searchable at once, replacing
    any item with this id. Durable in the journal beside the index before the answer."""
    retry_after = settings.retry_after_s
    await _takes_live_changes(snap, retry_after)
    async with admitted(state) as slot:
        up = await embed_upload(state, snap, slot, form.image, settings, snap.attributes)
    await form.image.seek(0)
    data = await read_upload(form.image, settings)
    metadata: dict[str, object] = dict(form.metadata)
    seq, replaced = await _journal(snap, retry_after, snap.index.put_item, item_id, data,
                                   metadata, up.vectors)
    stored = await snap.call(snap.index.get, item_id)     # with the tags the index gave it
    return LiveChangeResponse(
        id=item_id, op="put", seq=seq, replaced=replaced,
        item=ItemResponse(id=item_id, metadata=metadata, image_url=image_url(request, item_id),
                          tags=tag_infos(stored.tags) if stored is not None else {}),
        index_version=snap.version)


@router.delete(
    f"/{ITEM_ID}",
    response_model=LiveChangeResponse,
    summary="Remove a catalog item now",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def delete_item(item_id: PathItemId, settings: SettingsDep,
                      snap: SnapshotDep) -> LiveChangeResponse:
    """Remove the item from every result at once (404 when no item has this id)."""
    seq = await _journal(snap, settings.retry_after_s, snap.index.delete_item, item_id)
    if seq is None:
        raise item_not_found(item_id)
    return LiveChangeResponse(id=item_id, op="delete", seq=seq, replaced=True,
                              index_version=snap.version)
