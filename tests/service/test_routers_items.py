"""In-process tests of service/routers/items.py: list, get one and its image."""

from __future__ import annotations

import io
from urllib.parse import quote

from PIL import Image
from service_fakes import CATALOG, INDEX_VERSION, served_index
from testkit import error_of, ok

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
    body = r.json()
    assert {k: body[k] for k in ("id", "metadata", "image_url")} == {
        "id": "sku-05", "metadata": CATALOG[5][2], "image_url": "/v1/items/sku-05/image"}
    assert sorted(body["tags"]) == ["collar", "colour", "sleeve"]
    assert body["tags"]["colour"] == {"value": "c5", "confidence": 1.0, "source": "label"}


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


#: ids a folder or CSV catalog makes that are not plain tokens. Not "a%2Fb": Starlette's
#: TestClient decodes the path twice (uvicorn once); tests/service/test_item_ids.py serves
#: such ids over a real server.
ODD_IDS = ["dresses/a.jpg", "tops/summer sale/b 1.png", "ünï/✓.jpg", "100%", "50%off",
           "...", "a/../b", "../up", "./here", "x..y", "q?x=1#h", "plus+semi;amp&", "image"]


def _with_odd_ids(make_client, fake_catalog):
    client = make_client()
    index = served_index(client)
    for n, item_id in enumerate(ODD_IDS):
        index.add(Item(100 + n, item_id, str(fake_catalog.images["sku-01"]), {"n": str(n)}),
                  {a: index.embedding("sku-01", a) for a in index.attributes})
    return client


def test_every_id_is_addressable_by_its_urls(make_client, fake_catalog):
    client = _with_odd_ids(make_client, fake_catalog)
    for n, item_id in enumerate(ODD_IDS):
        item = ok(client.get(f"/v1/items/{quote(item_id, safe='')}"))
        assert item["id"] == item_id and item["metadata"] == {"n": str(n)}, item_id
        assert item["image_url"] == f"/v1/items/{quote(item_id, safe='')}/image"
        r = client.get(item["image_url"])
        assert r.status_code == 200 and r.content == fake_catalog.image_bytes("sku-01"), item_id
        assert client.get(item["image_url"], params={"max_side": 16}).status_code == 200


def test_a_slash_in_an_id_may_be_sent_encoded_or_not(make_client, fake_catalog):
    client = _with_odd_ids(make_client, fake_catalog)
    for path in ("/v1/items/dresses/a.jpg", "/v1/items/dresses%2Fa.jpg"):
        assert client.get(path).json()["id"] == "dresses/a.jpg"
        assert client.get(path + "/image").status_code == 200
    # servers decode %2F before routing: a URL ending in /image is an image URL
    assert client.get("/v1/items/sku-01%2Fimage").headers["content-type"] == "image/png"


def test_listed_image_urls_round_trip(make_client, fake_catalog):
    client = _with_odd_ids(make_client, fake_catalog)
    items = client.get("/v1/items", params={"limit": 200}).json()["items"]
    assert set(ODD_IDS) <= {it["id"] for it in items}
    for it in items:
        assert client.get(it["image_url"]).status_code == 200, it["id"]


def test_unknown_ids_with_odd_characters_are_404(app_client):
    for path in ("no/such/item", "%00", "%ED%A0%80", "%2E%2E", "nope/image", "sku-01%0A"):
        error_of(app_client.get(f"/v1/items/{path}"), 404, "item_not_found")
