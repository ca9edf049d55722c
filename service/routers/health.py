"""Liveness, readiness and Prometheus metrics (unversioned, for orchestrators)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..deps import SnapshotDep
from ..errors import error_responses
from ..metrics import CONTENT_TYPE
from ..schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    """The process is up and answering."""
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, summary="Readiness",
            responses=error_responses(503))
async def readyz(snap: SnapshotDep) -> ReadyResponse:
    """200 once a model and an index are loaded; 503 (with the reason) before."""
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
    """Requests, latency per route and per stage, batch sizes, queue depth, index sizes,
    rejects by error code and reloads."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
