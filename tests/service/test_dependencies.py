"""Every dependency of every route runs on the event loop: FastAPI runs a plain ``def``
dependency (or a class's ``__init__``) on its thread pool, a thread hand-off per dependency
per request on the path of every query (docs/BENCHMARKS.md, single-query latency)."""

from __future__ import annotations

import inspect
import pkgutil
from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service import routers
from service.app import api_v1, create_app
from service.routers import (
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
from service.settings import Settings

MODULES = (admin, attributes, compose, explain, health, items, live, rerank, search, tag)


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)


def _runs_on_the_loop(call: object) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = type(call).__call__   # e.g. APIKeyHeader instances
    return not inspect.isclass(call) and inspect.iscoroutinefunction(method)


def test_every_router_module_is_checked():
    names = {m.name for m in pkgutil.iter_modules(routers.__path__)}
    assert names == {m.__name__.rsplit(".", 1)[1] for m in MODULES}


def test_no_route_has_a_dependency_that_needs_the_thread_pool(tmp_path):
    app = create_app(Settings(index_dir=tmp_path / "index"))
    routes = [r for m in MODULES for r in m.router.routes]
    routes += [r for r in app.routes if isinstance(r, APIRoute)]
    assert all(isinstance(r, APIRoute) for r in routes) and len(routes) >= 20
    calls = [dep.call for route in routes for dep in _dependencies(route.dependant)]
    calls += [d.dependency for d in api_v1().dependencies]
    sync = sorted({repr(getattr(c, "__qualname__", c)) for c in calls
                   if c is not None and not _runs_on_the_loop(c)})
    assert sync == []
