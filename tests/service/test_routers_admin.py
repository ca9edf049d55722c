"""In-process tests of service/routers/admin.py: /v1/admin/status and /v1/admin/reload."""

from __future__ import annotations

import shutil
import time

import pytest
from service_fakes import ADMIN_KEY, INDEX_VERSION, FakeEmbedder, served_index, write_manifest
from testkit import error_of

ADMIN = {"X-API-Key": ADMIN_KEY}
LIVE_FIELDS = {"journal", "folded_seq", "applied_seq", "pending", "live_items", "changed_ids",
               "stale"}


@pytest.fixture
def own_index_dir(fake_catalog, tmp_path):
    """A copy of the fake INDEX_DIR that a test may republish."""
    folder = tmp_path / "index"
    shutil.copytree(fake_catalog.index_dir, folder)
    return folder


def test_status_reports_what_is_served(app_client, fake_catalog):
    r = app_client.get("/v1/admin/status", headers=ADMIN)
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True and body["last_error"] is None
    assert body["index_dir"] == str(fake_catalog.index_dir)
    assert body["index_version"] == INDEX_VERSION
    assert body["model"]["version"] == "f" * 12 and body["model"]["checkpoint"] == "fake.ckpt"
    assert body["loaded_at"]
    assert body["queue_depth"] == 0
    assert (body["batching"], body["batch_max_size"], body["queue_max"]) == (True, 16, 64)
    assert body["batch_max_wait_ms"] == 0
    assert set(body["live"]) == LIVE_FIELDS and body["live"]["stale"] is False


def test_status_before_an_index_says_why(make_client, tmp_path):
    body = _last_error(make_client(index_dir=tmp_path / "none", wait_ready=False))
    assert body["ready"] is False and body["index_version"] is None and body["model"] is None
    assert "no index" in body["last_error"] and body["live"] is None


def _last_error(client) -> dict:
    deadline = time.monotonic() + 5
    while (body := client.get("/v1/admin/status", headers=ADMIN).json())["last_error"] is None:
        assert time.monotonic() < deadline, body
        time.sleep(0.01)
    return body


def test_status_reports_a_model_that_did_not_build_the_index(make_client):
    client = make_client(embedder=FakeEmbedder(checkpoint_sha256="0" * 64), wait_ready=False)
    body = _last_error(client)
    assert body["ready"] is False and "sha256" in body["last_error"]
    error_of(client.get("/readyz"), 503, "not_ready")


def test_admin_needs_the_admin_key(app_client):
    for method, path in (("GET", "/v1/admin/status"), ("POST", "/v1/admin/reload")):
        r = app_client.request(method, path)
        error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        error_of(app_client.request(method, path, headers={"X-API-Key": "wrong"}),
                 401, "unauthorized")
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert app_client.get("/v1/admin/status", headers=bearer).status_code == 200


def test_admin_is_off_without_an_admin_key(make_client):
    client = make_client(admin_api_key=None)
    for method, path in (("GET", "/v1/admin/status"), ("POST", "/v1/admin/reload")):
        error_of(client.request(method, path, headers=ADMIN), 403, "admin_disabled")


def test_reload_of_the_served_version_changes_nothing(app_client):
    r = app_client.post("/v1/admin/reload", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() == {"reloaded": False, "index_version": INDEX_VERSION,
                        "previous_version": INDEX_VERSION, "message": "already serving it"}


def test_reload_switches_to_a_new_version_and_closes_the_old(make_client, own_index_dir):
    client = make_client(index_dir=own_index_dir)
    old = served_index(client)
    write_manifest(own_index_dir, version="20260202T000000Z-fake02")
    r = client.post("/v1/admin/reload", headers=ADMIN)
    assert r.status_code == 200
    body = r.json()
    assert body["reloaded"] is True
    assert (body["index_version"], body["previous_version"]) == \
        ("20260202T000000Z-fake02", INDEX_VERSION)
    assert client.get("/readyz").json()["index_version"] == "20260202T000000Z-fake02"
    deadline = time.monotonic() + 5
    while not old.closed:      # closed on its own thread once no request holds it
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_reload_of_a_broken_version_keeps_serving_the_old(make_client, own_index_dir):
    client = make_client(index_dir=own_index_dir)
    (own_index_dir / "manifest.json").write_text('{"format_version": 1', encoding="utf-8")
    body = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert body["reloaded"] is False and body["index_version"] == INDEX_VERSION
    write_manifest(own_index_dir, version="20260303T000000Z-fake03", checkpoint="gone.ckpt")
    (own_index_dir / "gone.ckpt").unlink()
    body = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert body["reloaded"] is False and "gone.ckpt" in body["message"]
    status = client.get("/v1/admin/status", headers=ADMIN).json()
    assert status["index_version"] == INDEX_VERSION and "gone.ckpt" in status["last_error"]
    assert client.get("/readyz").status_code == 200
