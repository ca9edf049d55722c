"""In-process tests of service/routers/items.py: list, get one and its image."""

from __future__ import annotations

import io

from PIL import Image
from service_fakes import CATALOG, INDEX_VERSION, served_index
from testkit import error_of

from indexer.items import Item


def test_list_items_pages_in_index_order(app_client):
    r = app_client.get("/v1/items", params={"offset": 2, "limit": 3})
    assert r.status_code == 200
    body = r.json()
    assert (body["total"], body["offset"], body["limit"]) == (len(CATALOG), 2, 3)
    assert body["index_version"] == INDEX_VERSION
    assert [it["id"] for it in body["items"]] == [c[0] for c in CATALOG[2:5]]
    first = body["items"][0]
    assert first["metadata"] == CATALOG[2][2]
    assert first["image_url"] == "/v1/items/sku-02/image"


def test_list_items_default_page_and_past_the_end(app_client):
    body = app_client.get("/v1/items").json()
    assert (body["offset"], body["limit"], len(body["items"])) == (0, 24, len(CATALOG))
    assert app_client.get("/v1/items", params={"offset": 100}).json()["items"] == []


def test_list_items_rejects_out_of_range_paging(app_client):
    for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "many"}):
        error = error_of(app_client.get("/v1/items", params=params), 422, "validation_error")
        assert error["details"], params


def test_get_item(app_client):
    r = app_client.get("/v1/items/sku-05")
    assert r.status_code == 200
    assert r.json() == {"id": "sku-05", "metadata": CATALOG[5][2],
                        "image_url": "/v1/items/sku-05/image"}


def test_get_unknown_item_is_404(app_client):
    error = error_of(app_client.get("/v1/items/no-such-sku"), 404, "item_not_found")
    assert error["details"] == {"item_id": "no-such-sku"}


def test_item_image_is_the_catalog_file(app_client, fake_catalog):
    r = app_client.get("/v1/items/sku-01/image")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-index-version"] == INDEX_VERSION
    assert r.content == fake_catalog.image_bytes("sku-01")


def test_item_image_thumbnail_is_a_jpeg_within_max_side(app_client):
    r = app_client.get("/v1/items/sku-01/image", params={"max_side": 16})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.format == "JPEG" and max(img.size) <= 16


def test_item_image_rejects_a_bad_max_side(app_client):
    for side in (8, 4096, "big"):
        error_of(app_client.get("/v1/items/sku-01/image", params={"max_side": side}),
                 422, "validation_error")


def test_item_image_of_unknown_item_is_404(app_client):
    error_of(app_client.get("/v1/items/no-such-sku/image"), 404, "item_not_found")


def test_item_image_missing_on_disk_is_404_image_unavailable(make_client, tmp_path):
    client = make_client()
    index = served_index(client)
    index.add(Item(999, "ghost", str(tmp_path / "gone.png"), {}),   # its file never existed
              {a: index.embedding("sku-00", a) for a in index.attributes})
    error = error_of(client.get("/v1/items/ghost/image"), 404, "image_unavailable")
    assert error["details"] == {"item_id": "ghost"}


def test_item_image_outside_image_roots_is_404(make_client, tmp_path):
    client = make_client(image_roots=[tmp_path / "elsewhere"])
    error_of(client.get("/v1/items/sku-01/image"), 404, "image_unavailable")


def test_item_image_inside_image_roots_is_served(make_client, fake_catalog):
    client = make_client(image_roots=[fake_catalog.images["sku-01"].parent])
    assert client.get("/v1/items/sku-01/image").status_code == 200
