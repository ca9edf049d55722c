"""The FastAPI application: ``create_app()`` and the module-level ``app`` for uvicorn."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from . import __version__, runtime  # noqa: F401  (runtime: process settings, first)
from .deps import require_api_key
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import RequestContextMiddleware
from .protocols import CatalogIndexLike, EmbedderLike
from .routers import (
    admin,
    attributes,
    compose,
    explain,
    health,
    items,
    live,
    rerank,
    search,
    tag,
)
from .settings import Settings, get_settings
from .state import ServiceState, load_embedder, open_catalog_index

STATIC_DIR = Path(__file__).parent / "static"
DESCRIPTION = """
Fine-grained fashion retrieval with ASEN++: items whose **attribute** (collar, sleeve
length, ...) looks like the query's. One embedding space per attribute; similarity is the
inner product of unit vectors.

* Errors share one JSON shape: `{"error": {"code", "message", "details"}, "request_id"}`.
* When `ASEN_API_KEY` is set, `/v1` endpoints need it as `X-API-Key` (or a Bearer token);
  `/v1/admin` endpoints always need `ASEN_ADMIN_API_KEY`.
* 503 responses carry `Retry-After` (no index loaded yet, or load shedding).
"""


def create_app(
    settings: Settings | None = None,
    *,
    open_index: Callable[[Path], CatalogIndexLike] = open_catalog_index,
    load_model: Callable[[Path, Settings], EmbedderLike] = load_embedder,
) -> FastAPI:
    """Build the app; the model and index load in the background after startup."""
    settings = settings or get_settings()
    metrics = Metrics()
    state = ServiceState(settings, metrics, open_index=open_index, load_model=load_model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="ASEN++ fashion search API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        root_path=settings.root_path,
        docs_url=None,      # FastAPI's pages load scripts from a CDN: ours below is offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = state
    install_error_handlers(app)
    app.include_router(api_v1())
    for module in (admin, live, health):
        app.include_router(module.router)

    _add_pages(app)
    _add_middleware(app, settings, metrics)
    _document_auth_truthfully(app, settings)
    _configure_logging(settings)
    return app


def _add_pages(app: FastAPI) -> None:
    """The web page, the offline API reference and their static files."""
    @app.get("/", include_in_schema=False)
    async def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs_page() -> FileResponse:
        """The API reference, rendered from /openapi.json by static/docs.js (no CDN)."""
        return FileResponse(STATIC_DIR / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """CORS (when origins are configured) inside the request-context middleware."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID", "X-Index-Version", "X-RoI-Box"],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics,
                       max_body_bytes=settings.max_upload_bytes)


def api_v1() -> APIRouter:
    """Every /v1 endpoint but the admin ones, behind ASEN_API_KEY (when set) in one place."""
    v1 = APIRouter(dependencies=[Depends(require_api_key)])
    for module in (search, compose, rerank, explain, tag, attributes, items):
        v1.include_router(module.router)
    return v1


def _configure_logging(settings: Settings) -> None:
    """Make the service's own log lines visible under plain `uvicorn service.app:app` too."""
    logger = logging.getLogger("service")
    logger.setLevel(settings.log_level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def _document_auth_truthfully(app: FastAPI, settings: Settings) -> None:
    """Without ASEN_API_KEY only the admin endpoints need a key: say so in the schema."""
    if settings.api_key is not None:
        return

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for path, operations in schema.get("paths", {}).items():
                if not path.startswith("/v1/admin"):
                    for operation in operations.values():
                        operation.pop("security", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
