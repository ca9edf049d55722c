"""In-process tests of service/routers/live.py: PUT and DELETE /v1/admin/items/{item_id}."""

from __future__ import annotations

import functools
import json
from urllib.parse import quote

import pytest
from service_fakes import ADMIN_KEY, INDEX_VERSION, served_index
from testkit import error_of, image_bytes, image_file

from indexer.live.journal import JournalError

ADMIN = {"X-API-Key": ADMIN_KEY}
NEW = (10, 250, 120)   # a colour no catalog item has


def _put(client, item_id: str, image: bytes | None, metadata: str | dict | None = None,
         headers: dict | None = ADMIN):
    data = {} if metadata is None else {
        "metadata": metadata if isinstance(metadata, str) else json.dumps(metadata)}
    files = image_file(image) if image is not None else None
    return client.put(f"/v1/admin/items/{item_id}", data=data, files=files, headers=headers)


def test_put_adds_an_item_searchable_at_once(make_client):
    client = make_client()
    image = image_bytes(NEW)
    r = _put(client, "sku-new", image, {"category": "top", "product_id": "p-new"})
    assert r.status_code == 200
    body = r.json()
    tags = body["item"].pop("tags")
    assert body == {"id": "sku-new", "op": "put", "seq": 1, "replaced": False,
                    "item": {"id": "sku-new",
                             "metadata": {"category": "top", "product_id": "p-new"},
                             "image_url": "/v1/items/sku-new/image"},
                    "index_version": INDEX_VERSION}
    assert sorted(tags) == ["collar", "colour", "sleeve"]          # predicted: no label column
    assert {t["source"] for t in tags.values()} == {"prediction"}
    assert client.get("/v1/items/sku-new").json()["metadata"]["product_id"] == "p-new"
    assert client.get("/v1/items/sku-new/image").content == image
    found = client.post("/v1/search", data={"attribute": "colour", "k": "1"},
                        files=image_file(image)).json()["results"]
    assert found[0]["id"] == "sku-new"
    assert client.get("/readyz").json()["items"] == len(served_index(client))


def test_put_of_an_existing_id_replaces_it(make_client):
    client = make_client()
    r = _put(client, "sku-03", image_bytes(NEW))
    assert r.status_code == 200
    body = r.json()
    assert body["replaced"] is True and body["item"]["metadata"] == {}
    assert client.get("/v1/items/sku-03").json()["metadata"] == {}


def test_delete_removes_an_item_and_a_second_delete_is_404(make_client):
    client = make_client()
    r = client.delete("/v1/admin/items/sku-02", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() == {"id": "sku-02", "op": "delete", "seq": 1, "replaced": True,
                        "item": None, "index_version": INDEX_VERSION}
    error_of(client.get("/v1/items/sku-02"), 404, "item_not_found")
    r = client.delete("/v1/admin/items/sku-02", headers=ADMIN)
    assert error_of(r, 404, "item_not_found")["details"] == {"item_id": "sku-02"}


@pytest.mark.parametrize("metadata", [
    {"id": "other"},                              # reserved keys
    {"image": "/etc/passwd"},
    '["not", "an", "object"]',
    "{broken",
    {"blob": "x" * (64 * 1024)},                  # over 64 KiB of JSON
])
def test_put_bad_metadata_is_422(app_client, metadata):
    error_of(_put(app_client, "sku-x", image_bytes(), metadata), 422, "validation_error")


def test_put_bad_item_ids_and_missing_image_are_422(app_client):
    error_of(_put(app_client, "bad%01id", image_bytes()), 422, "validation_error")
    error_of(_put(app_client, "x" * 513, image_bytes()), 422, "validation_error")
    error_of(_put(app_client, "sku-x", None), 422, "validation_error")


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"text, not pixels", 415, "unsupported_media_type"),
    (b"", 422, "empty_image"),
    (image_bytes()[:60], 422, "corrupt_image"),
])
def test_put_bad_uploads_are_client_errors(app_client, data, status, code):
    error_of(_put(app_client, "sku-x", data), status, code)
    error_of(app_client.get("/v1/items/sku-x"), 404, "item_not_found")   # nothing changed


def test_live_changes_need_the_admin_key(app_client, make_client):
    error_of(_put(app_client, "sku-x", image_bytes(), headers=None), 401, "unauthorized")
    error_of(app_client.delete("/v1/admin/items/sku-01"), 401, "unauthorized")
    off = make_client(admin_api_key=None)
    error_of(_put(off, "sku-x", image_bytes()), 403, "admin_disabled")
    error_of(off.delete("/v1/admin/items/sku-01", headers=ADMIN), 403, "admin_disabled")


def test_unwritable_journal_is_503_and_changes_nothing(make_client):
    client = make_client(retry_after_s=3)
    served_index(client).fail_writes = JournalError("disk full")
    r = _put(client, "sku-x", image_bytes())
    error_of(r, 503, "journal_unavailable")
    assert r.headers["retry-after"] == "3"
    error_of(client.delete("/v1/admin/items/sku-01", headers=ADMIN), 503, "journal_unavailable")
    assert client.get("/v1/items/sku-01").status_code == 200


def test_index_without_live_changes_is_503(make_client, fake_catalog):
    client = make_client(open_index=functools.partial(fake_catalog.open_index, live=False))
    r = _put(client, "sku-x", image_bytes())
    error_of(r, 503, "live_changes_unavailable")
    assert "retry-after" in r.headers
    error_of(client.delete("/v1/admin/items/sku-01", headers=ADMIN), 503,
             "live_changes_unavailable")
    assert client.get("/v1/admin/status", headers=ADMIN).json()["live"] is None


@pytest.mark.parametrize("item_id", ["dresses/new.jpg", "a b/ü ✓", "100%", "...", "a/../b",
                                     "../up", "./here", "image", "x/image.jpg"])
def test_put_any_servable_id_then_every_url_reaches_it(make_client, item_id):
    client = make_client()
    image = image_bytes(NEW)
    encoded = quote(item_id, safe="")
    body = _put(client, encoded, image, {"k": "v"}).json()
    assert body["id"] == item_id
    assert body["item"]["image_url"] == f"/v1/items/{encoded}/image"
    assert client.get(f"/v1/items/{encoded}").json()["id"] == item_id
    assert client.get(body["item"]["image_url"]).content == image
    by_item = client.post("/v1/search/by-item", json={"item_id": item_id, "attribute": "colour",
                                                      "k": 3, "include_self": True}).json()
    assert by_item["results"][0]["id"] == item_id
    assert client.delete(f"/v1/admin/items/{encoded}", headers=ADMIN).json()["id"] == item_id
    error_of(client.get(f"/v1/items/{encoded}"), 404, "item_not_found")


@pytest.mark.parametrize(("path", "why"), [
    ("%2E", "dot segments"), ("%2E%2E", "dot segments"), ("%20%20", "empty"),
    ("x%2Fimage", "/image"), ("tops/image", "/image"), ("a%C2%85b", "control character"),
    ("a%7Fb", "control character"), ("a%0Ab", "control character"), ("sku-01%0A", "control"),
    ("x" * 513, "at most 512"), ("", "at least 1"),
])
def test_put_of_an_id_that_cannot_be_served_is_422(app_client, path, why):
    error = error_of(_put(app_client, path, image_bytes()), 422, "validation_error")
    assert why in json.dumps(error["details"]), error
    listed = app_client.get("/v1/items", params={"limit": 200}).json()["items"]
    assert all(it["id"].startswith("sku-") for it in listed)          # nothing was added


def test_items_page_limit_is_1_to_200_and_openapi_says_so(make_client):
    client = make_client()
    for n in range(3):
        assert _put(client, f"live-{n}", image_bytes((n, 9, 9))).status_code == 200
    page = client.get("/v1/items", params={"offset": 0, "limit": 200}).json()
    assert page["limit"] == 200 and page["total"] == len(page["items"])
    assert [it["id"] for it in page["items"][-3:]] == ["live-0", "live-1", "live-2"]
    error_of(client.get("/v1/items", params={"limit": 201}), 422, "validation_error")
    error_of(client.get("/v1/items", params={"limit": 0}), 422, "validation_error")
    params = client.get("/openapi.json").json()["paths"]["/v1/items"]["get"]["parameters"]
    limit = next(p for p in params if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 200 and "1 to 200" in limit["description"]
