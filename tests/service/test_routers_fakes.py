"""The fakes the router tests serve keep to service/protocols.py: every member of the
protocols, with the same parameters, so a change of the seam fails here first."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from service_fakes import FakeEmbedder, FakeIndex

from service.protocols import CatalogIndexLike, EmbedderLike


def _members(protocol: type) -> dict[str, object]:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") or name == "__len__"}


def _parameters(fn: object) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.fixture
def fakes(fake_catalog) -> dict[type, object]:
    return {CatalogIndexLike: fake_catalog.open_index(fake_catalog.index_dir),
            EmbedderLike: FakeEmbedder()}


@pytest.mark.parametrize("protocol", [CatalogIndexLike, EmbedderLike])
def test_fakes_satisfy_the_protocols(fakes, protocol):
    fake = fakes[protocol]
    assert isinstance(fake, protocol)
    for name, member in _members(protocol).items():
        assert hasattr(fake, name), f"{type(fake).__name__} lacks {name}"
        if isinstance(member, property):
            continue   # a property of the protocol may be a plain attribute of the fake
        ours = getattr(type(fake), name)
        assert callable(ours), name
        assert _parameters(ours) == _parameters(member), name


def test_fake_index_hits_are_typed(fakes):
    from indexer.items import Hit

    index = fakes[CatalogIndexLike]
    assert isinstance(index, FakeIndex)
    query = index.embedding("sku-00", "collar")
    [hits] = index.search("collar", query[None, :], 2)
    assert all(isinstance(h, Hit) for h in hits) and hits[0].item.id == "sku-00"
    many = index.search_many({"collar": 1.0}, {"collar": query}, 2)
    assert isinstance(many[0], Hit) and set(many[0].scores) == {"collar"}


#: every route of the API and the module of in-process tests that drives it
ROUTES = {
    ("GET", "/healthz"): "health", ("GET", "/readyz"): "health", ("GET", "/metrics"): "health",
    ("GET", "/v1/attributes"): "attributes",
    ("GET", "/v1/items"): "items", ("GET", "/v1/items/{item_id}"): "items",
    ("GET", "/v1/items/{item_id}/image"): "items",
    ("POST", "/v1/search"): "search", ("POST", "/v1/search/multi"): "search",
    ("POST", "/v1/search/by-item"): "search", ("POST", "/v1/search/compose"): "compose",
    ("POST", "/v1/rerank"): "rerank", ("POST", "/v1/explain"): "explain",
    ("POST", "/v1/tag"): "tag",
    ("GET", "/v1/admin/status"): "admin", ("POST", "/v1/admin/reload"): "admin",
    ("PUT", "/v1/admin/items/{item_id}"): "live", ("DELETE", "/v1/admin/items/{item_id}"): "live",
}


def test_every_route_has_in_process_tests(app_client):
    schema = app_client.get("/openapi.json").json()
    served = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert served == set(ROUTES), "a route was added or removed: test it in test_routers_*.py"
    here = Path(__file__).parent
    for module in set(ROUTES.values()):
        assert (here / f"test_routers_{module}.py").is_file(), module
