"""Liveness, readiness and Prometheus metrics (unversioned, for orchestrators)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..deps import SettingsDep, StateDep
from ..errors import error_responses, unavailable
from ..metrics import CONTENT_TYPE, Metrics
from ..schemas import HealthResponse, ReadyResponse
from ..state import ServiceState, Snapshot

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    """The process is up and answering."""
    return HealthResponse()


async def _ready_snapshot(state: StateDep) -> AsyncIterator[Snapshot]:
    """The served snapshot; before one, a 503 with a generic reason: /readyz needs no key, so
    the details (paths, exception text) stay in the logs and GET /v1/admin/status."""
    if not state.ready:
        raise unavailable("no index loaded yet (see GET /v1/admin/status or the service log)",
                          state.settings.retry_after_s, code="not_ready")
    async with state.lease() as snap:
        yield snap


ReadySnapshotDep = Annotated[Snapshot, Depends(_ready_snapshot, scope="function")]


@router.get("/readyz", response_model=ReadyResponse, summary="Readiness",
            responses=error_responses(503))
async def readyz(snap: ReadySnapshotDep, settings: SettingsDep) -> ReadyResponse:
    """200 once a model and an index are loaded; 503 (with the reason) before, and while the
    served version is stale (the journal dropped live changes it needs: load the newer one)."""
    live = await snap.call(snap.index.live_status)
    if live is not None and live.stale:
        raise unavailable(
            f"index version {snap.version} is stale: the live-changes journal dropped changes "
            "it needs, which a newer version holds; load it (POST /v1/admin/reload, or set "
            "ASEN_RELOAD_INTERVAL_S)", settings.retry_after_s, code="stale_index")
    return ReadyResponse(index_version=snap.version, model_version=snap.model.version,
                         items=int(await snap.call(len, snap.index)),
                         attributes=snap.attributes)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Text exposition format."}},
)
async def metrics(request: Request) -> Response:
    """Requests, latency per route and per stage, batch sizes, queue depth, index sizes (live
    changes included), rejects by error code and reloads."""
    state: ServiceState = request.app.state.service
    registry: Metrics = request.app.state.metrics
    async with state.current() as snap:
        if snap is not None:
            registry.set_live(*await snap.call(_live_counts, snap))
    return Response(registry.render(), media_type=CONTENT_TYPE)


def _live_counts(snap: Snapshot) -> tuple[dict[str, int], bool | None]:
    """Searchable items per attribute now (live changes included) and whether the served
    version is stale (None: it takes no live changes)."""
    sizes = {a: int(snap.index.size(a)) for a in snap.attributes}
    live = snap.index.live_status()
    return sizes, None if live is None else live.stale
