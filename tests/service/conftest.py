"""Fixtures of the service tests: one live ``python -m service`` per test module, and the
in-process app over fakes (tests/service_fakes.py) for the router tests.

A module configures its server by overriding ``server_env`` (the ``ASEN_*`` variables;
default: the tiny synthetic index of ``fx``, no polling) and, when the service starts
without an index, ``server_ready_path`` ("/healthz" instead of "/readyz"). The modules on
the product catalog's indexes share one server instead (``products_server``): each serves
the index it needs first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from service_fakes import app_client, fake_catalog, make_client  # noqa: F401
from testkit import ProductCatalog, ServerProcess, TinyIndex, ok, product_catalog


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


@dataclass(frozen=True)
class ProductsServer:
    """A live server whose ASEN_INDEX_DIR is a symlink (``link``) to one of the product
    catalog's indexes; ``serve`` points it at another."""

    process: ServerProcess
    link: Path
    products: ProductCatalog
    admin: dict[str, str]

    def serve(self, folder: Path) -> None:
        """Point the symlink at the index ``folder`` (atomically) and reload."""
        tmp = self.link.with_name(self.link.name + ".next")
        os.symlink(os.path.realpath(folder), tmp)
        os.replace(tmp, self.link)
        version = json.loads((folder / "manifest.json").read_text())["index_version"]
        reloaded = ok(httpx.post(self.process.url + "/v1/admin/reload", headers=self.admin,
                                 timeout=60.0))
        assert reloaded["index_version"] == version, reloaded


@pytest.fixture(scope="session")
def products_server(products: ProductCatalog, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ProductsServer]:
    """One server for the modules on the product catalog (started once per run), serving its
    flat index at first."""
    link = tmp_path_factory.mktemp("served") / "index"
    os.symlink(os.path.realpath(products.index_dir), link)
    admin = {"X-API-Key": "products-admin"}
    env = {"ASEN_INDEX_DIR": str(link), "ASEN_RELOAD_INTERVAL_S": "0",
           "ASEN_ADMIN_API_KEY": admin["X-API-Key"]}
    with ServerProcess(env, log_dir=tmp_path_factory.mktemp("server")) as srv:
        srv.wait("/readyz")
        yield ProductsServer(srv, link, products, admin)
