"""In-process tests of service/routers/rerank.py: POST /v1/rerank."""

from __future__ import annotations

import json

import pytest
from service_fakes import ATTRIBUTES
from testkit import error_of, image_bytes, image_file

PATH = "/v1/rerank"


def _rerank(client, candidates: list | str, image: bytes | None = None, **fields: str):
    cands = candidates if isinstance(candidates, str) else json.dumps(candidates)
    files = image_file(image) if image is not None else None
    return client.post(PATH, data={"candidates": cands, **fields}, files=files)


def test_rerank_by_upload_orders_candidates_and_lists_unknown_ids(app_client, fake_catalog):
    candidates = ["sku-05", "nope", "sku-03", "sku-05", 7, "sku-10"]
    r = _rerank(app_client, candidates, fake_catalog.image_bytes("sku-03"), attribute="collar")
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == {"source": "upload", "item_id": None, "attribute": "collar",
                             "weights": None, "k": None, "filters": {}, "group_by": None,
                             "references": None, "but_with": None, "min_confidence": None,
                             "facets": None}
    results = body["results"]
    assert sorted(x["id"] for x in results) == ["sku-03", "sku-05", "sku-10"]
    assert results[0]["id"] == "sku-03"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [x["rank"] for x in results] == [1, 2, 3]
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)
    assert all(x["scores"] is None for x in results)
    assert body["unknown"] == ["nope", "7"]
    assert body["timings"]["batch_size"] == 1


def test_rerank_by_item_on_weights(app_client):
    r = _rerank(app_client, ["sku-00", "sku-04", "sku-08"], item_id="sku-04",
                weights=json.dumps({"sleeve": 1, "colour": 3}))
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["source"] == "item" and body["query"]["item_id"] == "sku-04"
    assert body["query"]["weights"] == {"sleeve": 0.25, "colour": 0.75}
    results = body["results"]
    assert results[0]["id"] == "sku-04"          # the query item is not left out
    for x in results:
        assert set(x["scores"]) == {"sleeve", "colour"}
    assert body["unknown"] == [] and body["timings"]["embed_ms"] is None


def test_rerank_group_by_keeps_the_best_candidate_per_group(app_client):
    body = _rerank(app_client, ["sku-00", "sku-01", "sku-02"], item_id="sku-01",
                   attribute="colour", group_by="product_id").json()
    assert [x["group"] for x in body["results"]] == ["p-0", "p-1"]
    assert body["results"][0]["id"] == "sku-01"


def test_rerank_of_no_candidates_is_empty(app_client):
    body = _rerank(app_client, [], item_id="sku-01", attribute="collar").json()
    assert body["results"] == [] and body["unknown"] == []


def test_rerank_unknown_query_item_is_404(app_client):
    r = _rerank(app_client, ["sku-01"], item_id="nope", attribute="collar")
    assert error_of(r, 404, "item_not_found")["details"] == {"item_id": "nope"}


def test_rerank_unknown_attribute_is_422_listing_the_valid_ones(app_client):
    r = _rerank(app_client, ["sku-01"], item_id="sku-01", attribute="collr")
    assert error_of(r, 422, "unknown_attribute")["details"]["valid"] == list(ATTRIBUTES)
    r = _rerank(app_client, ["sku-01"], item_id="sku-01", weights=json.dumps({"collr": 1}))
    error_of(r, 422, "unknown_attribute")


def test_rerank_unknown_group_by_is_422(app_client):
    r = _rerank(app_client, ["sku-01"], item_id="sku-01", attribute="collar", group_by="brand")
    error_of(r, 422, "unknown_column")


@pytest.mark.parametrize(("candidates", "fields", "with_image"), [
    (["sku-01"], {"attribute": "collar"}, False),                          # no query
    (["sku-01"], {"attribute": "collar", "item_id": "sku-01"}, True),      # two queries
    (["sku-01"], {"item_id": "sku-01"}, False),                            # no attribute
    (["sku-01"], {"item_id": "sku-01", "attribute": "collar",
                  "weights": '{"collar": 1}'}, False),                     # both
    (["sku-01"], {"item_id": "sku-01", "weights": "[1]"}, False),
    ([f"sku-{n}" for n in range(1001)], {"item_id": "sku-01", "attribute": "collar"}, False),
    ([None], {"item_id": "sku-01", "attribute": "collar"}, False),
    ([""], {"item_id": "sku-01", "attribute": "collar"}, False),
    ('{"sku-01": 1}', {"item_id": "sku-01", "attribute": "collar"}, False),
    ("[sku-01", {"item_id": "sku-01", "attribute": "collar"}, False),
])
def test_rerank_bad_requests_are_422(app_client, candidates, fields, with_image):
    r = _rerank(app_client, candidates, image_bytes() if with_image else None, **fields)
    error_of(r, 422, "validation_error")


def test_rerank_without_candidates_is_422(app_client):
    error_of(app_client.post(PATH, data={"item_id": "sku-01", "attribute": "collar"}),
             422, "validation_error")


def test_rerank_bad_upload_is_415(app_client):
    error_of(_rerank(app_client, ["sku-01"], b"\x00\x01 nope", attribute="collar"),
             415, "unsupported_media_type")
