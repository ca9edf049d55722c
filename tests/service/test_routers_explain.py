"""In-process tests of service/routers/explain.py: POST /v1/explain."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from service_fakes import ATTRIBUTES, INDEX_VERSION, served_index
from testkit import error_of, image_bytes, image_file

from indexer.items import Item

PATH = "/v1/explain"


def _explain(client, image: bytes | None = None, params: dict | None = None, **fields: str):
    files = image_file(image) if image is not None else None
    return client.post(PATH, data=fields, files=files, params=params)


def test_explain_an_upload_as_json(app_client):
    r = _explain(app_client, image_bytes(size=(48, 64)), attribute="collar")
    assert r.status_code == 200
    body = r.json()
    assert body["attribute"] == "collar"
    assert body["image_size"] == [48, 64]
    attention = body["attention"]
    assert len(attention) == 4 and all(len(row) == 4 for row in attention)
    assert sum(map(sum, attention)) == pytest.approx(1.0, abs=1e-4)
    assert body["box"] == {"x0": 12, "y0": 16, "x1": 24, "y1": 32}
    region = body["attention_region"]
    assert 0 <= region["x0"] < region["x1"] <= 48 and 0 <= region["y0"] < region["y1"] <= 64
    with Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))) as overlay:
        assert overlay.format == "PNG"
    assert body["timings"]["batch_size"] == 1 and body["timings"]["embed_ms"] >= 0
    assert body["model"]["version"] == "f" * 12
    assert body["index_version"] == INDEX_VERSION


def test_explain_as_png_with_the_box_in_a_header(app_client):
    r = _explain(app_client, image_bytes(size=(48, 64)), params={"format": "png"},
                 attribute="sleeve")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-roi-box"] == "12,16,24,32"
    assert r.headers["x-index-version"] == INDEX_VERSION
    with Image.open(io.BytesIO(r.content)) as overlay:
        assert overlay.format == "PNG"


def test_explain_an_indexed_item(app_client):
    r = _explain(app_client, item_id="sku-06", attribute="colour")
    assert r.status_code == 200
    assert r.json()["image_size"] == [48, 64]


def test_explain_unknown_item_is_404(app_client):
    r = _explain(app_client, item_id="nope", attribute="collar")
    assert error_of(r, 404, "item_not_found")["details"] == {"item_id": "nope"}


def test_explain_item_without_its_image_is_404(make_client, tmp_path):
    client = make_client()
    index = served_index(client)
    index.add(Item(999, "ghost", str(tmp_path / "gone.png"), {}),
              {a: index.embedding("sku-00", a) for a in index.attributes})
    error_of(_explain(client, item_id="ghost", attribute="collar"), 404, "image_unavailable")


def test_explain_item_outside_image_roots_is_404_like_its_image(make_client, tmp_path):
    """ASEN_IMAGE_ROOTS holds for explain too: the item's image, reached through a symlink in
    the catalog folder, lies outside the roots."""
    outside, roots = tmp_path / "outside", tmp_path / "catalog"
    outside.mkdir()
    roots.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(image_bytes((9, 9, 9)))
    (roots / "linked.png").symlink_to(secret)
    client = make_client(image_roots=[roots])
    index = served_index(client)
    index.add(Item(998, "linked", str(roots / "linked.png"), {}),
              {a: index.embedding("sku-00", a) for a in index.attributes})
    error_of(client.get("/v1/items/linked/image"), 404, "image_unavailable")
    for params in ({}, {"format": "png"}):
        r = client.post("/v1/explain", params=params,
                        data={"item_id": "linked", "attribute": "colour"})
        error_of(r, 404, "image_unavailable")
    (roots / "inside.png").write_bytes(image_bytes((9, 9, 9)))
    index.add(Item(997, "inside", str(roots / "inside.png"), {}),
              {a: index.embedding("sku-00", a) for a in index.attributes})
    assert _explain(client, item_id="inside", attribute="colour").status_code == 200


def test_explain_unknown_attribute_is_422_listing_the_valid_ones(app_client):
    r = _explain(app_client, image_bytes(), attribute="collr")
    assert error_of(r, 422, "unknown_attribute")["details"]["valid"] == list(ATTRIBUTES)


@pytest.mark.parametrize(("with_image", "fields", "params"), [
    (True, {"item_id": "sku-01", "attribute": "collar"}, None),   # both
    (False, {"attribute": "collar"}, None),                        # neither
    (True, {}, None),                                              # no attribute
    (True, {"attribute": "collar"}, {"format": "gif"}),
])
def test_explain_bad_requests_are_422(app_client, with_image, fields, params):
    r = _explain(app_client, image_bytes() if with_image else None, params=params, **fields)
    error_of(r, 422, "validation_error")


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"no image here", 415, "unsupported_media_type"),
    (b"", 422, "empty_image"),
    (image_bytes()[:60], 422, "corrupt_image"),
])
def test_explain_bad_uploads_are_client_errors(app_client, data, status, code):
    error_of(_explain(app_client, data, attribute="collar"), status, code)
