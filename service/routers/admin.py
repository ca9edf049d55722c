"""Operator endpoints (always behind ASEN_ADMIN_API_KEY)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import SettingsDep, StateDep, require_admin_key
from ..errors import error_responses
from ..schemas import AdminStatus, JournalStatus, PrecisionStatus, ReloadResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"],
                   dependencies=[Depends(require_admin_key)],
                   responses=error_responses(401, 403))


@router.post("/reload", response_model=ReloadResponse, summary="Reload the index now")
async def reload_index(state: StateDep) -> ReloadResponse:
    """Open the index now in ASEN_INDEX_DIR and switch to it if its version is new (also
    retries a version that failed before). Requests in flight finish on the old one."""
    return await state.reload(force=True)


@router.get("/status", response_model=AdminStatus, summary="Runtime status")
async def status(settings: SettingsDep, state: StateDep) -> AdminStatus:
    """What is served, the last load error, the batching configuration and the journal
    (answers before an index is loaded too)."""
    async with state.current() as snap:
        live = None if snap is None else await snap.call(snap.index.live_status)
        return AdminStatus(
            ready=snap is not None,
            index_dir=str(settings.index_dir),
            index_version=snap.version if snap else None,
            model=snap.model if snap else None,
            precision=None if snap is None else PrecisionStatus.model_validate(
                snap.embedder.precision_choice.to_dict()),
            loaded_at=snap.loaded_at.isoformat() if snap else None,
            last_error=state.last_error,
            queue_depth=state.batcher.depth,
            batching=settings.batching,
            batch_max_size=settings.batch_max_size,
            batch_max_wait_ms=settings.batch_max_wait_ms,
            queue_max=settings.queue_max,
            live=None if live is None else JournalStatus.model_validate(live),
        )
