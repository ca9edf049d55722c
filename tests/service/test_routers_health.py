"""In-process tests of service/routers/health.py: /healthz, /readyz and /metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from service_fakes import ADMIN_KEY, ATTRIBUTES, CATALOG, INDEX_VERSION, served_index
from testkit import error_of, image_bytes, image_file

from indexer.live.overlay import LiveStatus


def test_healthz_answers_ok(app_client):
    r = app_client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_reports_versions_items_and_attributes(app_client):
    r = app_client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "index_version": INDEX_VERSION,
                        "model_version": "f" * 12, "items": len(CATALOG),
                        "attributes": list(ATTRIBUTES)}


def test_readyz_is_503_not_ready_with_retry_after_before_an_index(make_client, tmp_path):
    client = make_client(index_dir=tmp_path / "nothing-yet", wait_ready=False,
                         retry_after_s=7)
    assert client.get("/healthz").status_code == 200   # alive without an index
    r = client.get("/readyz")
    error = error_of(r, 503, "not_ready")
    assert r.headers["retry-after"] == "7"
    assert "no index" in error["message"]


def test_search_endpoints_are_503_before_an_index(make_client, tmp_path):
    client = make_client(index_dir=tmp_path / "nothing-yet", wait_ready=False)
    error_of(client.get("/v1/attributes"), 503, "not_ready")
    error_of(client.post("/v1/search/by-item", json={"item_id": "sku-00",
                                                     "attribute": "collar"}), 503, "not_ready")
    error_of(client.post("/v1/search"), 503, "not_ready")   # before its fields are checked


def test_metrics_is_prometheus_text(app_client):
    app_client.get("/healthz")
    r = app_client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "asen_ready 1.0" in text
    assert 'asen_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert f'index_version="{INDEX_VERSION}"' in text


def test_unknown_route_is_404_in_the_error_shape(app_client):
    error_of(app_client.get("/v1/no-such-route"), 404, "not_found")


def _stale(index) -> Callable[[], LiveStatus]:
    status = index.live_status()
    return lambda: dataclasses.replace(status, stale=True)


def test_readyz_is_503_stale_index_while_the_journal_dropped_changes_it_needs(
        make_client, monkeypatch):
    client = make_client(retry_after_s=3)
    index = served_index(client)
    monkeypatch.setattr(index, "live_status", _stale(index))
    r = client.get("/readyz")
    error = error_of(r, 503, "stale_index")
    assert r.headers["retry-after"] == "3"
    assert INDEX_VERSION in error["message"] and "reload" in error["message"]
    assert "/" + "tmp" not in error["message"]                 # no path of the host
    assert "asen_live_stale 1.0" in client.get("/metrics").text
    status = client.get("/v1/admin/status", headers={"X-API-Key": ADMIN_KEY}).json()
    assert status["ready"] is True and status["live"]["stale"] is True


def test_metrics_index_items_count_live_changes_at_once(make_client):
    client = make_client()
    colour = 'asen_index_items{attribute="colour"}'
    assert f"{colour} {float(len(CATALOG))}" in client.get("/metrics").text
    admin = {"X-API-Key": ADMIN_KEY}
    assert client.put("/v1/admin/items/sku-new", files=image_file(image_bytes((1, 2, 3))),
                      headers=admin).status_code == 200
    assert client.delete("/v1/admin/items/sku-00", headers=admin).status_code == 200
    assert client.delete("/v1/admin/items/sku-01", headers=admin).status_code == 200
    text = client.get("/metrics").text
    assert f"{colour} {float(len(CATALOG) - 1)}" in text
    assert "asen_live_stale 0.0" in text
