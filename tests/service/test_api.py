"""The search API over HTTP against a real uvicorn server on a tiny synthetic index."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from testkit import encode_image, error_of, image_file

ADMIN_KEY = "admin-test-key"


@pytest.fixture(scope="module")
def server_env(fx):
    return {
        "ASEN_INDEX_DIR": str(fx.index_dir),
        "ASEN_ADMIN_API_KEY": ADMIN_KEY,
        "ASEN_RELOAD_INTERVAL_S": "0",
    }


@pytest.fixture(scope="module")
def attributes(client):
    return [a["name"] for a in client.get("/v1/attributes").json()["attributes"]]


# ---------------------------------------------------------------- health


def test_health_and_ready(client, fx):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["items"] == len(fx.item_ids())
    manifest = json.loads((fx.index_dir / "manifest.json").read_text())
    assert body["index_version"] == manifest["index_version"]


def test_openapi_documents_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for path in ("/v1/search", "/v1/search/multi", "/v1/search/by-item", "/v1/explain",
                 "/v1/attributes", "/v1/items", "/v1/items/{item_id}",
                 "/v1/items/{item_id}/image", "/v1/admin/reload", "/v1/admin/status",
                 "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    body = schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    assert "ErrorResponse" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------- catalog


def test_attributes(client, fx):
    body = client.get("/v1/attributes").json()
    names = [a["name"] for a in body["attributes"]]
    assert names == ["sleeve_length", "neckline", "hem_length", "button", "colour", "pattern"]
    for a in body["attributes"]:
        assert a["index_size"] == len(fx.item_ids()) and a["n_values"] >= 2
    assert body["model"]["dim"] == 128 and body["model"]["config"] == "tiny"


def test_items_list_get_and_image(client, fx):
    page = client.get("/v1/items", params={"offset": 2, "limit": 5}).json()
    assert page["total"] == len(fx.item_ids()) and len(page["items"]) == 5
    assert [i["id"] for i in page["items"]] == fx.item_ids()[2:7]
    item_id = page["items"][0]["id"]
    item = client.get(f"/v1/items/{item_id}").json()
    assert item["id"] == item_id and "colour" in item["metadata"]
    img = client.get(item["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert img.content == fx.image(item_id).read_bytes()
    thumb = client.get(item["image_url"], params={"max_side": 32})
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 32


def test_unknown_item_is_404_everywhere(client, attributes):
    error_of(client.get("/v1/items/nope"), 404, "item_not_found")
    error_of(client.get("/v1/items/nope/image"), 404, "item_not_found")
    error_of(client.post("/v1/search/by-item",
                             json={"item_id": "nope", "attribute": attributes[0]}),
                 404, "item_not_found")
    error_of(client.post("/v1/explain", data={"item_id": "nope",
                                                  "attribute": attributes[0]}),
                 404, "item_not_found")


def test_no_path_traversal_through_item_images(client):
    for raw in ("/v1/items/..%2F..%2F..%2Fetc%2Fpasswd/image",
                "/v1/items/%2e%2e/image",
                "/v1/items/..%5C..%5Cwindows/image"):
        resp = client.get(raw)
        assert resp.status_code == 404, raw
        assert "root:" not in resp.text
    resp = client.post("/v1/search/by-item",
                       json={"item_id": "../../../../etc/passwd", "attribute": "colour"})
    error_of(resp, 404, "item_not_found")


# ---------------------------------------------------------------- search


def test_search_by_upload(client, fx):
    query_id = "test-000001"
    resp = client.post("/v1/search", files=image_file(fx.image(query_id)),
                       data={"attribute": "neckline", "k": "5"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["id"] == query_id and scores[0] > 0.999  # the item itself is indexed
    assert all(r["image_url"].endswith("/image") and r["metadata"] for r in results)
    t = body["timings"]
    for stage in ("decode_ms", "queue_ms", "embed_ms", "search_ms", "total_ms"):
        assert t[stage] >= 0
    assert t["total_ms"] >= t["embed_ms"] and t["batch_size"] >= 1
    assert body["query"] == {"source": "upload", "item_id": None, "attribute": "neckline",
                             "weights": None, "k": 5, "filters": {}, "group_by": None,
                             "references": None, "but_with": None, "min_confidence": 0.5,
                             "facets": None}
    manifest = json.loads((fx.index_dir / "manifest.json").read_text())
    assert body["index_version"] == manifest["index_version"]
    assert body["model"]["version"] == manifest["model"]["sha256"][:12]


def test_search_accepts_png_and_filters(client, fx):
    img = Image.open(fx.image("test-000002")).convert("RGB")
    resp = client.post("/v1/search", files=image_file(encode_image(img), "q.png", "image/png"),
                       data={"attribute": "colour", "k": "50",
                             "filters": json.dumps({"split": "train"})})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert results and all(r["metadata"]["split"] == "train" for r in results)
    none = client.post("/v1/search", files=image_file(fx.image("test-000002")),
                       data={"attribute": "colour", "filters": '{"split": "nowhere"}'})
    assert none.status_code == 200 and none.json()["results"] == []


def test_search_multi_combines_weighted_scores(client, fx):
    weights = {"neckline": 0.7, "sleeve_length": 0.3}
    resp = client.post("/v1/search/multi", files=image_file(fx.image("test-000003")),
                       data={"weights": json.dumps(weights), "k": "6"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"]["weights"] == pytest.approx(weights)
    for r in body["results"]:
        combined = sum(w * r["scores"][a] for a, w in weights.items())
        assert r["score"] == pytest.approx(combined, abs=1e-4)
    assert body["results"][0]["id"] == "test-000003"
    # weights are normalised: 7 and 3 rank exactly like 0.7 and 0.3
    again = client.post("/v1/search/multi", files=image_file(fx.image("test-000003")),
                        data={"weights": '{"neckline": 7, "sleeve_length": 3}', "k": "6"})
    assert [r["id"] for r in again.json()["results"]] == [r["id"] for r in body["results"]]


def test_search_by_item(client):
    resp = client.post("/v1/search/by-item",
                       json={"item_id": "train-000004", "attribute": "pattern", "k": 4})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    ids = [r["id"] for r in body["results"]]
    assert len(ids) == 4 and "train-000004" not in ids
    assert body["query"]["source"] == "item"
    with_self = client.post("/v1/search/by-item", json={
        "item_id": "train-000004", "attribute": "pattern", "k": 4, "include_self": True}).json()
    assert with_self["results"][0]["id"] == "train-000004"
    assert with_self["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["id"] for r in with_self["results"][1:]] == ids[:3]
    multi = client.post("/v1/search/by-item", json={
        "item_id": "train-000004", "weights": {"pattern": 1, "colour": 1}, "k": 3})
    assert multi.status_code == 200
    assert set(multi.json()["results"][0]["scores"]) == {"pattern", "colour"}


def test_same_upload_same_answer_as_by_item(client, fx):
    up = client.post("/v1/search", files=image_file(fx.image("train-000005")),
                     data={"attribute": "hem_length", "k": "4"}).json()
    by = client.post("/v1/search/by-item", json={
        "item_id": "train-000005", "attribute": "hem_length", "k": 4,
        "include_self": True}).json()
    assert [r["id"] for r in up["results"]] == [r["id"] for r in by["results"]]


# ---------------------------------------------------------------- explain


def test_explain_json_and_png(client, fx):
    path = fx.image("test-000001")
    w, h = Image.open(path).size
    resp = client.post("/v1/explain", files=image_file(path), data={"attribute": "sleeve_length"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    att = np.array(body["attention"])
    assert att.ndim == 2 and att.sum() == pytest.approx(1.0, abs=1e-3)
    assert body["image_size"] == [w, h]
    box = body["box"]
    assert 0 <= box["x0"] < box["x1"] <= w and 0 <= box["y0"] < box["y1"] <= h
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (w, h)
    png = client.post("/v1/explain", params={"format": "png"},
                      data={"item_id": "test-000001", "attribute": "sleeve_length"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-roi-box"] == f"{box['x0']},{box['y0']},{box['x1']},{box['y1']}"
    assert Image.open(io.BytesIO(png.content)).size == (w, h)


# ---------------------------------------------------------------- bad input


def test_non_image_upload_is_415(client):
    resp = client.post("/v1/search", files=image_file(b"not an image at all", "x.jpg"),
                       data={"attribute": "colour"})
    err = error_of(resp, 415, "unsupported_media_type")
    assert "not a supported image" in err["message"]
    pdf = client.post("/v1/search", data={"attribute": "colour"},
                      files=image_file(b"%PDF-1.4\n%%EOF\n", "x.pdf", "application/pdf"))
    error_of(pdf, 415)


def test_corrupt_and_empty_uploads_are_422(client, fx):
    data = fx.image("train-000001").read_bytes()
    error_of(client.post("/v1/search", files=image_file(data[: len(data) // 3]),
                             data={"attribute": "colour"}), 422, "corrupt_image")
    error_of(client.post("/v1/search", files=image_file(b""), data={"attribute": "colour"}),
                 422, "empty_image")
    error_of(client.post("/v1/search", data={"attribute": "colour"}), 422,
                 "validation_error")


def test_oversized_upload_is_413(client):
    limit = 10 * 1024 * 1024
    just_over = client.post("/v1/search", files=image_file(b"\xff" * (limit + 1)),
                            data={"attribute": "colour"})
    err = error_of(just_over, 413, "payload_too_large")
    assert str(limit) in err["message"]
    way_over = client.post("/v1/search", files=image_file(b"\xff" * (limit + 2 * 1024 * 1024)),
                           data={"attribute": "colour"})
    error_of(way_over, 413, "payload_too_large")


def test_decompression_bomb_is_rejected(client):
    bomb = encode_image(Image.new("1", (9000, 9000)))  # 81 Mpx in a few kB
    assert len(bomb) < 100_000
    err = error_of(client.post("/v1/search", files=image_file(bomb, "bomb.png", "image/png"),
                                   data={"attribute": "colour"}), 413, "image_too_large")
    assert "pixels" in err["message"]


def test_unknown_attribute_lists_valid_ones(client, fx, attributes):
    err = error_of(client.post("/v1/search", files=image_file(fx.image("train-000001")),
                                   data={"attribute": "collar"}), 422, "unknown_attribute")
    assert err["details"]["valid"] == attributes
    assert all(a in err["message"] for a in attributes)
    err = error_of(client.post("/v1/search/multi", files=image_file(fx.image("train-000001")),
                                   data={"weights": '{"collar": 1}'}), 422, "unknown_attribute")
    error_of(client.post("/v1/search/by-item",
                             json={"item_id": "train-000001", "attribute": "collar"}),
                 422, "unknown_attribute")
    error_of(client.post("/v1/explain", files=image_file(fx.image("train-000001")),
                             data={"attribute": "collar"}), 422, "unknown_attribute")


@pytest.mark.parametrize("k", ["0", "-1", "101", "100000", "ten"])
def test_k_out_of_range(client, fx, k):
    error_of(client.post("/v1/search", files=image_file(fx.image("train-000001")),
                             data={"attribute": "colour", "k": k}), 422, "validation_error")


def test_other_invalid_parameters(client, fx):
    img = image_file(fx.image("train-000001"))
    for bad in ('{"neckline": -1}', '{"neckline": 0}', "[]", "{", '{"neckline": "x"}', "{}"):
        error_of(client.post("/v1/search/multi", files=img, data={"weights": bad}), 422)
    error_of(client.post("/v1/search", files=img,
                             data={"attribute": "colour", "filters": "[1, 2]"}), 422)
    error_of(client.post("/v1/search/by-item", json={"item_id": "train-000001"}), 422)
    error_of(client.post("/v1/search/by-item", json={
        "item_id": "train-000001", "attribute": "colour", "weights": {"colour": 1}}), 422)
    error_of(client.post("/v1/search/by-item", content=b"{not json",
                             headers={"content-type": "application/json"}), 422)
    error_of(client.post("/v1/explain", data={"attribute": "colour"}), 422)
    error_of(client.get("/v1/items", params={"limit": 0}), 422)


def test_unknown_route_and_method_share_error_shape(client):
    error_of(client.get("/v1/nothing-here"), 404, "not_found")
    error_of(client.get("/v1/search"), 405, "method_not_allowed")


# ---------------------------------------------------------------- admin and ops


def test_admin_endpoints_need_the_admin_key(client):
    error_of(client.post("/v1/admin/reload"), 401, "unauthorized")
    error_of(client.post("/v1/admin/reload", headers={"X-API-Key": "wrong"}), 401)
    ok = client.post("/v1/admin/reload", headers={"X-API-Key": ADMIN_KEY})
    assert ok.status_code == 200 and ok.json()["reloaded"] is False
    status = client.get("/v1/admin/status",
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert status["ready"] is True and status["batching"] is True and status["queue_depth"] == 0


def test_request_id_is_echoed(client):
    resp = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    weird = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert weird.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics(client, fx):
    client.post("/v1/search", files=image_file(fx.image("train-000002")),
                data={"attribute": "colour"})
    client.post("/v1/search", files=image_file(b"nope"), data={"attribute": "colour"})
    text = client.get("/metrics").text
    assert 'asen_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'asen_http_request_duration_seconds_bucket{' in text
    for stage in ("decode", "queue", "embed", "search"):
        assert f'asen_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert "asen_batch_size_bucket" in text
    assert f'asen_index_items{{attribute="colour"}} {float(len(fx.item_ids()))}' in text
    assert 'asen_rejected_requests_total{code="unsupported_media_type"}' in text
    assert "asen_queue_depth 0.0" in text and "asen_ready 1.0" in text


def test_web_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "static/app.js" in page.text
    assert "content-security-policy" in page.headers
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
