"""Fixtures shared by the service tests: one live ``python -m service`` per test module.

A module configures its server by overriding ``server_env`` (the ``ASEN_*`` variables;
default: the tiny synthetic index of ``fx``, no polling) and, when the service starts
without an index, ``server_ready_path`` ("/healthz" instead of "/readyz").
"""

from __future__ import annotations

import httpx
import pytest
from testkit import Fixture, ServerProcess, build_fixture


@pytest.fixture(scope="module")
def fx() -> Fixture:
    """The tiny synthetic catalog, random tiny checkpoint and index (built once per run)."""
    return build_fixture()


@pytest.fixture(scope="module")
def server_env(fx: Fixture) -> dict[str, str]:
    """Environment of the module's server (override in a module to configure it)."""
    return {"ASEN_INDEX_DIR": str(fx.index_dir), "ASEN_RELOAD_INTERVAL_S": "0"}


@pytest.fixture(scope="module")
def server_ready_path() -> str:
    """The path that answers 200 once the server is usable."""
    return "/readyz"


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], server_ready_path: str):
    """The module's live uvicorn server (``.url``, ``.log()``)."""
    with ServerProcess(server_env) as srv:
        srv.wait(server_ready_path)
        yield srv


@pytest.fixture(scope="module")
def client(server):
    """An HTTP client for the module's live uvicorn server."""
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c
