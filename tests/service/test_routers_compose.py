"""In-process tests of service/routers/compose.py: POST /v1/search/compose."""

from __future__ import annotations

import json

import pytest
from service_fakes import ATTRIBUTES, served_index
from testkit import error_of, image_bytes, image_file

PATH = "/v1/search/compose"


def _compose(client, references: list | str, images: list[bytes] = (), **fields: str):
    refs = references if isinstance(references, str) else json.dumps(references)
    files = [("images", image_file(data, f"q{n}.png")["image"]) for n, data in enumerate(images)]
    return client.post(PATH, data={"references": refs, **fields}, files=files or None)


def test_compose_an_upload_and_an_item(app_client, fake_catalog):
    refs = [{"attribute": "collar", "weight": 3, "image": 0},
            {"attribute": "colour", "weight": 1, "item_id": "sku-05"}]
    r = _compose(app_client, refs, [fake_catalog.image_bytes("sku-02")], k="6")
    assert r.status_code == 200
    body = r.json()
    query = body["query"]
    assert query["source"] == "compose" and query["k"] == 6
    assert query["weights"] == {"collar": 0.75, "colour": 0.25}
    assert query["references"] == [
        {"attribute": "collar", "weight": 0.75, "image": 0, "item_id": None, "value": None},
        {"attribute": "colour", "weight": 0.25, "image": None, "item_id": "sku-05",
         "value": None}]
    results = body["results"]
    assert len(results) == 6
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)
    for x in results:
        assert x["score"] == pytest.approx(0.75 * x["scores"]["collar"]
                                           + 0.25 * x["scores"]["colour"], abs=1e-5)
    assert body["timings"]["batch_size"] == 1


def test_compose_with_one_upload_reference_is_the_plain_search(app_client, fake_catalog):
    image = fake_catalog.image_bytes("sku-08")
    composed = _compose(app_client, [{"attribute": "sleeve", "image": 0}], [image], k="5").json()
    plain = app_client.post("/v1/search", data={"attribute": "sleeve", "k": "5"},
                            files=image_file(image)).json()
    assert [(x["id"], round(x["score"], 5)) for x in composed["results"]] == \
        [(x["id"], round(x["score"], 5)) for x in plain["results"]]
    assert composed["results"][0]["scores"] == {"sleeve": pytest.approx(1.0, abs=1e-5)}


def test_compose_with_one_item_reference_is_by_item_with_include_self(app_client):
    composed = _compose(app_client, [{"attribute": "colour", "item_id": "sku-10"}], k="4")
    assert composed.status_code == 200
    by_item = app_client.post("/v1/search/by-item", json={
        "item_id": "sku-10", "attribute": "colour", "k": 4, "include_self": True}).json()
    assert [x["id"] for x in composed.json()["results"]] == \
        [x["id"] for x in by_item["results"]]
    assert composed.json()["timings"]["embed_ms"] is None     # nothing uploaded


def test_compose_does_not_read_an_upload_of_weight_zero(app_client):
    refs = [{"attribute": "collar", "weight": 0, "image": 0},
            {"attribute": "collar", "weight": 1, "item_id": "sku-01"}]
    r = _compose(app_client, refs, [b"not even an image"], k="2")
    assert r.status_code == 200
    assert r.json()["query"]["weights"] == {"collar": 1.0}


def test_compose_filters_and_group_by(app_client):
    refs = [{"attribute": "collar", "item_id": "sku-01"},
            {"attribute": "sleeve", "item_id": "sku-02"}]
    body = _compose(app_client, refs, k="3", filters=json.dumps({"category": "top"}),
                    group_by="product_id").json()
    assert body["query"]["filters"] == {"category": "top"}
    results = body["results"]
    assert results and all(x["metadata"]["category"] == "top" for x in results)
    assert len({x["group"] for x in results}) == len(results)


def test_compose_reads_every_item_reference_in_one_index_call(app_client, monkeypatch):
    index = served_index(app_client)
    calls = []
    real = index.embeddings

    def counted(ids, attrs):
        calls.append((list(ids), list(attrs)))
        return real(ids, attrs)

    monkeypatch.setattr(index, "embeddings", counted)
    refs = [{"attribute": "collar", "item_id": "sku-03"},
            {"attribute": "colour", "item_id": "sku-07"},
            {"attribute": "sleeve", "item_id": "sku-03"}]
    body = _compose(app_client, refs, k="5").json()
    assert calls == [(["sku-03", "sku-07"], ["collar", "colour", "sleeve"])]
    stored = {(r["item_id"], r["attribute"]): index.embedding(r["item_id"], r["attribute"])
              for r in refs}
    for x in body["results"]:   # each attribute compared with its own reference's vector
        for (item_id, attribute), query in stored.items():
            expected = float(query @ index.embedding(x["id"], attribute))
            assert x["scores"][attribute] == pytest.approx(expected, abs=1e-5), item_id


def test_compose_names_the_first_unknown_item(app_client):
    refs = [{"attribute": "collar", "item_id": "sku-01"},
            {"attribute": "colour", "item_id": "gone"},
            {"attribute": "sleeve", "item_id": "also-gone"}]
    assert error_of(_compose(app_client, refs), 404, "item_not_found")["details"] == \
        {"item_id": "gone"}


def test_compose_unknown_item_is_404(app_client):
    r = _compose(app_client, [{"attribute": "collar", "item_id": "nope"}])
    assert error_of(r, 404, "item_not_found")["details"] == {"item_id": "nope"}


def test_compose_unknown_attribute_is_422_listing_the_valid_ones(app_client):
    r = _compose(app_client, [{"attribute": "collr", "item_id": "sku-01"}])
    assert error_of(r, 422, "unknown_attribute")["details"]["valid"] == list(ATTRIBUTES)


@pytest.mark.parametrize(("references", "n_images"), [
    ([{"attribute": "collar", "image": 1}], 1),                            # beyond uploads
    ([{"attribute": "collar", "item_id": "sku-01"}], 1),                   # upload unnamed
    ([{"attribute": "collar", "image": 0, "item_id": "sku-01"}], 1),       # both sources
    ([{"attribute": "collar"}], 0),                                        # no source
    ([{"attribute": "collar", "weight": 0, "item_id": "sku-01"}], 0),      # all weights 0
    ([{"attribute": "collar", "weight": -1, "item_id": "sku-01"}], 0),
    ([], 0),
    ([{"attribute": "collar", "item_id": "sku-01"}] * 17, 0),              # over 16
    ('{"attribute": "collar"}', 0),                                        # not a list
    ("[{", 0),                                                             # not JSON
])
def test_compose_bad_references_are_422(app_client, references, n_images):
    r = _compose(app_client, references, [image_bytes()] * n_images)
    error_of(r, 422, "validation_error")


def test_compose_bad_k_and_missing_references_are_422(app_client):
    refs = [{"attribute": "collar", "item_id": "sku-01"}]
    error_of(_compose(app_client, refs, k="0"), 422, "validation_error")
    error_of(app_client.post(PATH, data={"k": "3"}), 422, "validation_error")


def test_compose_bad_upload_is_415(app_client):
    r = _compose(app_client, [{"attribute": "collar", "image": 0}], [b"plain text"])
    error_of(r, 415, "unsupported_media_type")
