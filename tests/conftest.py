"""Fixtures shared by the service tests: each module defines its own ``server``."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def client(server):
    """An HTTP client for the module's live uvicorn server."""
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c
