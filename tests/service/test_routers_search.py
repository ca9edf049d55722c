"""In-process tests of service/routers/search.py: /v1/search, /v1/search/multi and
/v1/search/by-item over the fake index (see tests/service_fakes.py)."""

from __future__ import annotations

import json

import pytest
from service_fakes import ATTRIBUTES, CATALOG, INDEX_VERSION
from testkit import error_of, image_bytes, image_file

METADATA = {item_id: meta for item_id, _, meta in CATALOG}


def _search(client, data: dict, image: bytes | None, path: str = "/v1/search"):
    files = image_file(image) if image is not None else None
    return client.post(path, data=data, files=files)


# ------------------------------------------------------------------ POST /v1/search


def test_search_by_upload_finds_the_item_with_that_image_first(app_client, fake_catalog):
    r = _search(app_client, {"attribute": "collar", "k": "3"}, fake_catalog.image_bytes("sku-03"))
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == {"source": "upload", "item_id": None, "attribute": "collar",
                             "weights": None, "k": 3, "filters": {}, "group_by": None,
                             "references": None, "but_with": None, "min_confidence": 0.5,
                             "facets": None}
    results = body["results"]
    assert [x["rank"] for x in results] == [1, 2, 3]
    top = results[0]
    assert top["id"] == "sku-03" and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["metadata"] == METADATA["sku-03"]
    assert top["image_url"] == "/v1/items/sku-03/image"
    assert top["scores"] is None and top["group"] is None
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)
    timings = body["timings"]
    assert timings["batch_size"] == 1
    for stage in ("decode_ms", "queue_ms", "embed_ms", "search_ms", "total_ms"):
        assert timings[stage] >= 0
    assert body["model"]["version"] == "f" * 12
    assert body["index_version"] == INDEX_VERSION


def test_search_default_k_and_filters(app_client, fake_catalog):
    image = fake_catalog.image_bytes("sku-00")
    assert len(_search(app_client, {"attribute": "sleeve"}, image).json()["results"]) == 10
    r = _search(app_client, {"attribute": "sleeve", "k": "20",
                             "filters": json.dumps({"category": "dress"})}, image)
    body = r.json()
    assert body["query"]["filters"] == {"category": "dress"}
    ids = [x["id"] for x in body["results"]]
    assert ids and all(METADATA[i]["category"] == "dress" for i in ids)
    assert len(ids) == sum(m["category"] == "dress" for m in METADATA.values())


def test_search_list_filter_means_any_of(app_client, fake_catalog):
    r = _search(app_client, {"attribute": "collar", "k": "20",
                             "filters": json.dumps({"colour": ["c1", "c4", 7]})},
                fake_catalog.image_bytes("sku-04"))
    body = r.json()
    assert r.status_code == 200, body
    assert body["query"]["filters"] == {"colour": ["c1", "c4", "7"]}
    assert sorted(x["id"] for x in body["results"]) == ["sku-01", "sku-04"]
    assert body["results"][0]["id"] == "sku-04"


def test_search_group_by_gives_one_item_per_group(app_client, fake_catalog):
    r = _search(app_client, {"attribute": "colour", "k": "4", "group_by": "product_id"},
                fake_catalog.image_bytes("sku-07"))
    body = r.json()
    assert r.status_code == 200 and body["query"]["group_by"] == "product_id"
    groups = [x["group"] for x in body["results"]]
    assert len(groups) == 4 and len(set(groups)) == 4
    assert all(x["group"] == x["metadata"]["product_id"] for x in body["results"])
    assert body["results"][0]["id"] == "sku-07"


def test_search_unknown_attribute_is_422_listing_the_valid_ones(app_client):
    error = error_of(_search(app_client, {"attribute": "collr"}, image_bytes()),
                     422, "unknown_attribute")
    assert error["details"] == {"attribute": "collr", "valid": list(ATTRIBUTES)}
    assert "collar" in error["message"]


def test_search_unknown_group_by_column_is_422_listing_the_columns(app_client):
    error = error_of(_search(app_client, {"attribute": "collar", "group_by": "brand"},
                             image_bytes()), 422, "unknown_column")
    assert error["details"] == {"group_by": "brand",     # metadata columns + tagged attributes
                                "valid": ["category", "collar", "colour", "product_id",
                                          "sleeve"]}


@pytest.mark.parametrize("data", [
    {"attribute": "collar", "k": "0"},
    {"attribute": "collar", "k": "101"},          # over ASEN_MAX_K
    {"attribute": "collar", "k": "ten"},
    {"attribute": "collar", "filters": "{not json"},
    {"attribute": "collar", "filters": "[1, 2]"},
    {"attribute": "collar", "filters": json.dumps({"category": {"a": "b"}})},
    {"attribute": "collar", "filters": json.dumps({"category": []})},
    {"attribute": "collar", "colour": "red"},      # no such field
    {},                                            # no attribute
])
def test_search_bad_fields_are_422(app_client, data):
    error_of(_search(app_client, data, image_bytes()), 422, "validation_error")


def test_search_without_an_image_is_422(app_client):
    error = error_of(_search(app_client, {"attribute": "collar"}, None), 422, "validation_error")
    assert any(d["loc"][-1] == "image" for d in error["details"])


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"certainly not an image", 415, "unsupported_media_type"),
    (b"", 422, "empty_image"),
    (image_bytes()[:60], 422, "corrupt_image"),
])
def test_search_bad_uploads_are_client_errors(app_client, data, status, code):
    error_of(_search(app_client, {"attribute": "collar"}, data), status, code)


def test_search_upload_over_the_byte_limit_is_413(make_client):
    client = make_client(max_upload_bytes=2048)
    big = image_bytes(size=(128, 128), fmt="BMP")
    assert len(big) > 2048
    error_of(_search(client, {"attribute": "collar"}, big), 413, "payload_too_large")


def test_search_image_over_the_pixel_limit_is_413(make_client):
    client = make_client(max_image_pixels=100)
    error = error_of(_search(client, {"attribute": "collar"}, image_bytes(size=(20, 20))),
                     413, "image_too_large")
    assert error["details"]["max_pixels"] == 100


# ------------------------------------------------------------------ POST /v1/search/multi


def test_multi_normalises_weights_and_scores_each_attribute(app_client, fake_catalog):
    embedder = fake_catalog.embedder
    before = embedder.calls
    r = _search(app_client, {"weights": json.dumps({"collar": 3, "colour": 1, "sleeve": 0}),
                             "k": "5"}, fake_catalog.image_bytes("sku-09"), "/v1/search/multi")
    assert r.status_code == 200
    assert embedder.calls == before + 1          # one forward pass for both attributes
    body = r.json()
    assert body["query"]["source"] == "upload"
    assert body["query"]["weights"] == {"collar": 0.75, "colour": 0.25}
    assert body["query"]["attribute"] is None
    results = body["results"]
    assert len(results) == 5 and results[0]["id"] == "sku-09"
    for x in results:
        assert set(x["scores"]) == {"collar", "colour"}
        assert x["score"] == pytest.approx(0.75 * x["scores"]["collar"]
                                           + 0.25 * x["scores"]["colour"], abs=1e-5)


@pytest.mark.parametrize(("weights", "code"), [
    (json.dumps({"collr": 1}), "unknown_attribute"),
    (json.dumps({"collar": -1}), "validation_error"),
    (json.dumps({"collar": 0, "colour": 0}), "validation_error"),
    (json.dumps({"collar": "heavy"}), "validation_error"),
    ("{}", "validation_error"),
    ("[0.5]", "validation_error"),
    ("collar=1", "validation_error"),
])
def test_multi_bad_weights_are_422(app_client, weights, code):
    r = _search(app_client, {"weights": weights}, image_bytes(), "/v1/search/multi")
    error = error_of(r, 422, code)
    if code == "unknown_attribute":
        assert error["details"]["valid"] == list(ATTRIBUTES)


def test_multi_bad_upload_is_415(app_client):
    r = _search(app_client, {"weights": json.dumps({"collar": 1})}, b"GIF89a nonsense",
                "/v1/search/multi")
    error_of(r, 415, "unsupported_media_type")


# ------------------------------------------------------------------ POST /v1/search/by-item


def test_by_item_leaves_the_item_out_unless_include_self(app_client):
    body = app_client.post("/v1/search/by-item",
                           json={"item_id": "sku-04", "attribute": "sleeve", "k": 3}).json()
    assert body["query"]["source"] == "item" and body["query"]["item_id"] == "sku-04"
    assert body["query"]["attribute"] == "sleeve" and body["query"]["k"] == 3
    ids = [x["id"] for x in body["results"]]
    assert len(ids) == 3 and "sku-04" not in ids
    assert body["timings"]["search_ms"] >= 0 and body["timings"]["embed_ms"] is None
    body = app_client.post("/v1/search/by-item", json={
        "item_id": "sku-04", "attribute": "sleeve", "k": 3, "include_self": True}).json()
    assert body["results"][0]["id"] == "sku-04"
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_by_item_with_weights_filters_and_group_by(app_client):
    r = app_client.post("/v1/search/by-item", json={
        "item_id": "sku-01", "weights": {"collar": 1, "sleeve": 1}, "k": 3,
        "filters": {"category": "top"}, "group_by": "product_id"})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["weights"] == {"collar": 0.5, "sleeve": 0.5}
    results = body["results"]
    assert results and all(x["metadata"]["category"] == "top" for x in results)
    assert all(set(x["scores"]) == {"collar", "sleeve"} for x in results)
    assert len({x["group"] for x in results}) == len(results)
    assert "sku-01" not in [x["id"] for x in results]


def test_by_item_unknown_item_is_404(app_client):
    r = app_client.post("/v1/search/by-item", json={"item_id": "nope", "attribute": "collar"})
    assert error_of(r, 404, "item_not_found")["details"] == {"item_id": "nope"}


@pytest.mark.parametrize(("body", "code"), [
    ({"item_id": "sku-01"}, "validation_error"),                                 # neither
    ({"item_id": "sku-01", "attribute": "collar", "weights": {"collar": 1}},     # both
     "validation_error"),
    ({"item_id": "sku-01", "attribute": "collr"}, "unknown_attribute"),
    ({"item_id": "sku-01", "weights": {"collr": 1}}, "unknown_attribute"),
    ({"item_id": "sku-01", "weights": {"collar": "1"}}, "validation_error"),    # not a number
    ({"item_id": "sku-01", "weights": {"collar": -1}}, "validation_error"),
    ({"item_id": "sku-01", "attribute": "collar", "k": 0}, "validation_error"),
    ({"item_id": "", "attribute": "collar"}, "validation_error"),
    ({"attribute": "collar"}, "validation_error"),
    ({"item_id": "sku-01", "attribute": "collar", "group_by": "brand"}, "unknown_column"),
])
def test_by_item_bad_requests_are_422(app_client, body, code):
    error_of(app_client.post("/v1/search/by-item", json=body), 422, code)


def test_by_item_malformed_json_is_422(app_client):
    r = app_client.post("/v1/search/by-item", content=b"{item_id: ",
                        headers={"Content-Type": "application/json"})
    error = error_of(r, 422, "validation_error")
    assert error["details"][0]["type"] == "json_invalid"
