"""The ids users really have, over a real server: a folder catalog with sub-folders (ids are
relative paths: ``/``, spaces, unicode, ``%``, ``?``, ``#``, dots), indexed by a fresh
``python -m indexer`` and served by ``python -m service`` (uvicorn decodes ``%2F`` before
routing, which the in-process client does not reproduce exactly). Every id is reachable by
item, image (its ``image_url`` as given), by-item, explain, the web page and DELETE; live PUTs
take any servable id, ``.``/``..`` segments included, and refuse the rest with 422.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from testkit import error_of, image_bytes, image_file, ok, run_indexer, tiny_checkpoint

#: as in test_web_page.py (test modules do not import each other)
CHROMIUM = Path(os.environ.get("ASEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ADMIN_KEY = "ids-admin-key"
ADMIN = {"X-API-Key": ADMIN_KEY}
#: the folder catalog: relative path (the id) -> colour; sub-folders, odd characters
FILES = {
    "top.jpg": (200, 30, 30),
    "dresses/a.jpg": (30, 200, 30),
    "tops/summer sale/b 1.png": (30, 30, 200),
    "ünï/✓ café.jpg": (200, 200, 30),
    "pct/100%.png": (30, 200, 200),
    "pct/a%2Fb.png": (200, 30, 200),       # a literal "%2F" in a file name
    "dots/x..y.jpg": (120, 60, 30),
    "a..b/c.d.e.png": (30, 60, 120),
    "q/what?#1.png": (90, 90, 90),
    "plus/a+b;c&d=e'(f)!.png": (160, 160, 60),
    "image/image.png": (60, 160, 160),     # a folder and a file named like the URL suffix
}
IDS = sorted(FILES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ``python -m indexer`` of the folder catalog: the index folder."""
    root = tmp_path_factory.mktemp("ids")
    catalog = root / "catalog"
    for n, (name, rgb) in enumerate(FILES.items()):
        path = catalog / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(rgb, size=(40 + n, 56), fmt="PNG"))
    checkpoint = tiny_checkpoint(root / "tiny.pt", [("colour", 3), ("neckline", 2)])
    run_indexer(catalog, checkpoint, root / "index")
    return root


@pytest.fixture(scope="module")
def server_env(folder: Path) -> dict[str, str]:
    return {"ASEN_INDEX_DIR": str(folder / "index"), "ASEN_ADMIN_API_KEY": ADMIN_KEY,
            "ASEN_RELOAD_INTERVAL_S": "0", "ASEN_IMAGE_ROOTS": str(folder / "catalog")}


def _file(folder: Path, item_id: str) -> bytes:
    return (folder / "catalog" / item_id).read_bytes()


def test_every_listed_image_url_round_trips(client, folder):
    page = ok(client.get("/v1/items", params={"limit": 200}))
    assert sorted(it["id"] for it in page["items"]) == IDS
    for it in page["items"]:
        assert it["image_url"] == f"/v1/items/{quote(it['id'], safe='')}/image"
        r = client.get(it["image_url"])
        assert r.status_code == 200 and r.content == _file(folder, it["id"]), it["id"]
        thumb = client.get(it["image_url"], params={"max_side": 16})
        assert thumb.headers["content-type"] == "image/jpeg", it["id"]


@pytest.mark.parametrize("item_id", IDS)
def test_item_by_its_id_encoded_or_with_plain_slashes(client, item_id):
    encoded = quote(item_id, safe="")
    assert ok(client.get(f"/v1/items/{encoded}"))["id"] == item_id
    plain = quote(item_id, safe="/")     # "/" as is, the rest encoded: routes the same
    assert ok(client.get(f"/v1/items/{plain}"))["id"] == item_id
    assert client.get(f"/v1/items/{plain}/image").status_code == 200


@pytest.mark.parametrize("item_id", IDS)
def test_by_item_and_explain_take_every_id(client, item_id):
    found = ok(client.post("/v1/search/by-item", json={"item_id": item_id, "attribute": "colour",
                                                       "k": len(IDS)}))
    assert item_id not in [r["id"] for r in found["results"]]
    assert len(found["results"]) == len(IDS) - 1
    body = ok(client.post("/v1/explain", data={"item_id": item_id, "attribute": "neckline"}))
    assert body["overlay_png"]
    png = client.post("/v1/explain", params={"format": "png"},
                      data={"item_id": item_id, "attribute": "neckline"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_web_page_shows_every_thumbnail(server, browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    failed: list[str] = []
    pg.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    try:
        pg.goto(server.url + "/")
        pg.wait_for_selector("#attribute option", state="attached")
        pg.click("#tab-catalog")
        pg.wait_for_selector("#catalog-grid button")
        shown = pg.locator("#catalog-grid button").evaluate_all(
            "els => els.map(e => e.dataset.id)")
        assert sorted(shown) == IDS
        pg.wait_for_function(
            "() => [...document.querySelectorAll('#catalog-grid img')]"
            ".every(i => i.complete && i.naturalWidth > 0)")
        pg.click('#catalog-grid button[data-id="pct/a%2Fb.png"]')   # search by that item
        pg.click("#search")
        pg.wait_for_selector(".result-card")
        pg.wait_for_function(
            "() => [...document.querySelectorAll('.result-card img, #query-img')]"
            ".every(i => i.complete && i.naturalWidth > 0)")
    finally:
        ctx.close()
    assert not errors, errors
    assert not failed, failed


LIVE_IDS = ["a/../b", "../up", "./here", "...", "new/dir/x y ✓.png", "50%25 off", "a%2Fb"]


@pytest.mark.parametrize("item_id", LIVE_IDS)
def test_live_put_of_any_servable_id_then_delete(client, item_id):
    encoded = quote(item_id, safe="")
    image = image_bytes((10, 250, 120), size=(50, 50))
    put = ok(client.put(f"/v1/admin/items/{encoded}", files=image_file(image), headers=ADMIN))
    assert put["id"] == item_id and put["item"]["image_url"] == f"/v1/items/{encoded}/image"
    assert ok(client.get(f"/v1/items/{encoded}"))["id"] == item_id
    assert client.get(put["item"]["image_url"]).content == image
    ok(client.post("/v1/search/by-item", json={"item_id": item_id, "attribute": "colour"}))
    assert ok(client.delete(f"/v1/admin/items/{encoded}", headers=ADMIN))["op"] == "delete"
    error_of(client.get(f"/v1/items/{encoded}"), 404, "item_not_found")


@pytest.mark.parametrize("path", ["%2E", "%2E%2E", ".%2E", "%20", "x%2Fimage", "dresses/image",
                                  "a%00b", "a%0Ab", "a%C2%85b", "x" * 513])
def test_live_put_of_an_id_that_cannot_be_served_is_422(client, path):
    r = client.put(f"/v1/admin/items/{path}", files=image_file(image_bytes()), headers=ADMIN)
    error_of(r, 422, "validation_error")


def test_delete_works_for_every_catalog_id(client):
    """Last: it empties the catalog the other tests read."""
    for item_id in IDS:
        r = client.delete(f"/v1/admin/items/{quote(item_id, safe='')}", headers=ADMIN)
        assert ok(r)["id"] == item_id
        error_of(client.get(f"/v1/items/{quote(item_id, safe='')}"), 404, "item_not_found")
    assert ok(client.get("/v1/items"))["total"] == 0
