"""Fixtures of the service tests: one live ``python -m service`` per test module, and the
in-process app over fakes (tests/service_fakes.py) for the router tests.

A module configures its server by overriding ``server_env`` (the ``ASEN_*`` variables;
default: the tiny synthetic index of ``fx``, no polling) and, when the service starts
without an index, ``server_ready_path`` ("/healthz" instead of "/readyz").
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from service_fakes import app_client, fake_catalog, make_client  # noqa: F401
from testkit import ProductCatalog, ServerProcess, TinyIndex, product_catalog


@pytest.fixture(scope="module")
def server_env(fx: TinyIndex) -> dict[str, str]:
    """Environment of the module's server (override in a module to configure it)."""
    return {"ASEN_INDEX_DIR": str(fx.index_dir), "ASEN_RELOAD_INTERVAL_S": "0"}


@pytest.fixture(scope="module")
def server_ready_path() -> str:
    """The path that answers 200 once the server is usable."""
    return "/readyz"


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], server_ready_path: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The module's live uvicorn server (``.url``, ``.log()``)."""
    with ServerProcess(server_env, log_dir=tmp_path_factory.mktemp("server")) as srv:
        srv.wait(server_ready_path)
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client for the module's live uvicorn server."""
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="session")
def products(fx: TinyIndex, tmp_path_factory: pytest.TempPathFactory) -> ProductCatalog:
    """The tiny catalog with product and edition columns, its embeddings store and a flat
    index of that store (built once per run; read-only)."""
    return product_catalog(fx, tmp_path_factory.mktemp("products"))
