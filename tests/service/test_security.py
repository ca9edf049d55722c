"""API keys, CORS, upload limits, image roots and load shedding, over HTTP; the holes of
issue 23's security probe (over HTTP and in process)."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest
from PIL import Image
from service_fakes import ADMIN_KEY
from testkit import encode_image, error_of, image_bytes, image_file

API_KEY = "search-key-123"
ORIGIN = "https://shop.example"
LIMIT = 300_000


@pytest.fixture(scope="module")
def server_env(fx, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("not-the-images")
    return {
        "ASEN_INDEX_DIR": str(fx.index_dir),
        "ASEN_API_KEY": API_KEY,
        "ASEN_CORS_ORIGINS": f"{ORIGIN},https://admin.example",
        "ASEN_MAX_UPLOAD_BYTES": str(LIMIT),
        "ASEN_QUEUE_MAX": "2",
        "ASEN_RETRY_AFTER_S": "3",
        "ASEN_IMAGE_ROOTS": str(elsewhere),
        "ASEN_RELOAD_INTERVAL_S": "0",
    }


AUTH = {"X-API-Key": API_KEY}


def jpeg(size=(64, 64), quality=90):
    """A JPEG of a grey gradient (slow to decode when large)."""
    return encode_image(Image.linear_gradient("L").resize(size).convert("RGB"), "JPEG",
                        quality=quality)


def test_search_needs_the_api_key(client, fx):
    files = {"image": ("q.jpg", fx.image("train-000001").read_bytes(), "image/jpeg")}
    data = {"attribute": "colour"}
    resp = client.post("/v1/search", files=files, data=data)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    assert resp.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/search", files=files, data=data,
                       headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/v1/search", files=files, data=data, headers=AUTH).status_code == 200
    bearer = client.post("/v1/search", files=files, data=data,
                         headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200
    for path in ("/v1/attributes", "/v1/items", "/v1/items/train-000001"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=AUTH).status_code == 200


def test_health_and_metrics_need_no_key(client):
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert client.get(path).status_code == 200, path


def test_admin_is_disabled_without_admin_key(client):
    resp = client.post("/v1/admin/reload", headers=AUTH)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_disabled"


def test_openapi_declares_the_key(client):
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert any(s.get("name") == "X-API-Key" for s in schemes.values())


def test_cors(client):
    pre = client.options("/v1/search", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    got = client.get("/v1/attributes", headers={**AUTH, "Origin": ORIGIN})
    assert got.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in got.headers["access-control-expose-headers"].lower()
    other = client.get("/v1/attributes", headers={**AUTH, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_configured_upload_limit(client):
    big = b"\x00" * (LIMIT + 1)
    resp = client.post("/v1/search", files={"image": ("q.jpg", big, "image/jpeg")},
                       data={"attribute": "colour"}, headers=AUTH)
    assert resp.status_code == 413 and str(LIMIT) in resp.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="attribute"\r\n\r\ncolour\r\n'
        yield boundary + (b'Content-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                          b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(20):
            yield b"\x00" * 65536
        yield b"\r\n--xyz--\r\n"

    streamed = client.post("/v1/search", content=chunks(), headers={
        **AUTH, "Content-Type": "multipart/form-data; boundary=xyz"})
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"]["code"] == "payload_too_large"


def test_item_images_only_from_allowed_roots(client):
    resp = client.get("/v1/items/train-000001/image", headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "image_unavailable"


def test_overload_sheds_with_503_and_retry_after(client):
    payload = jpeg((2400, 2400), quality=80)  # slow enough to decode that requests overlap
    assert len(payload) < LIMIT
    statuses: list[int] = []
    retry_after: set[str] = set()
    lock = threading.Lock()

    def hit():
        with httpx.Client(base_url=str(client.base_url), timeout=60.0) as c:
            for _ in range(3):
                r = c.post("/v1/search", files={"image": ("q.jpg", payload, "image/jpeg")},
                           data={"attribute": "colour"}, headers=AUTH)
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 503:
                        assert r.json()["error"]["code"] == "overloaded"
                        retry_after.add(r.headers.get("retry-after", ""))

    threads = [threading.Thread(target=hit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) > 0, statuses
    assert retry_after == {"3"}
    metrics = client.get("/metrics").text
    assert 'asen_rejected_requests_total{code="overloaded"}' in metrics


# ---------------------------------------------------------------- issue 23: the probe's holes


def test_explain_of_an_item_honours_the_image_roots(client):
    """The item's image is outside ASEN_IMAGE_ROOTS: explain must not decode it either."""
    resp = client.post("/v1/explain", data={"item_id": "train-000001", "attribute": "colour"},
                       headers=AUTH)
    assert resp.status_code == 404, resp.text[:300]
    assert resp.json()["error"]["code"] == "image_unavailable"
    png = client.post("/v1/explain", params={"format": "png"},
                      data={"item_id": "train-000001", "attribute": "colour"}, headers=AUTH)
    assert png.status_code == 404 and png.headers["content-type"] == "application/json"


#: Filters a client can send that SQLite or the JSON encoder cannot take.
BAD_FILTERS = [
    {"split\u0000": "train"}, {"split": "tr\u0000ain"}, {"\ud800": "train"},
    {"split": "\udfff"}, {"split": ["train", "\ud800"]}, {"sp\u001blit": "train"},
    {f"key{i}": "v" for i in range(2000)},
]


@pytest.mark.parametrize("filters", BAD_FILTERS, ids=lambda f: ascii(f)[:30])
def test_bad_filter_text_is_422_not_500(client, server, filters):
    body = {"item_id": "train-000001", "attribute": "colour", "filters": filters}
    resp = client.post("/v1/search/by-item", content=json.dumps(body),   # ASCII: \\ud800
                       headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text[:300]
    assert resp.json()["error"]["code"] == "validation_error"
    assert "Traceback" not in server.log()


def test_a_thousand_filter_keys_are_refused_with_the_limit(client, server):
    filters = json.dumps({f"key{i}": "v" for i in range(998)})
    resp = client.post("/v1/search", files={"image": ("q.jpg", jpeg(), "image/jpeg")},
                       data={"attribute": "colour", "filters": filters}, headers=AUTH)
    assert resp.status_code == 422, resp.text[:300]
    assert "at most 64" in resp.json()["error"]["message"]
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("candidates", ['["a\\u0000"]', '["\\ud800"]', '["ok", "b\\u0007"]'])
def test_bad_candidate_text_is_422_not_500(client, server, candidates):
    resp = client.post("/v1/rerank", headers=AUTH, data={
        "item_id": "train-000001", "attribute": "colour", "candidates": candidates})
    assert resp.status_code == 422, resp.text[:300]
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- in-process (fakes)


def test_multipart_limits_answer_documented_statuses(app_client):
    many = json.dumps([f"sku-{i:06d}" for i in range(150_000)])   # one text part over 1 MB
    assert len(many) > 1024 * 1024
    resp = app_client.post("/v1/rerank", data={
        "item_id": "sku-00", "attribute": "colour", "candidates": many})
    assert error_of(resp, 413, "payload_too_large")["message"].startswith("a form field")
    fields = {"attribute": "colour", **{f"f{i}": "x" for i in range(1001)}}
    resp = app_client.post("/v1/search", data=fields, files=image_file(image_bytes()))
    assert "1000" in error_of(resp, 422, "too_many_fields")["message"]


def test_readyz_gives_no_path_or_exception_text(make_client, tmp_path):
    missing = tmp_path / "secret-place" / "index"
    client = make_client(index_dir=missing, wait_ready=False)
    body = error_of(client.get("/readyz"), 503, "not_ready")
    assert "secret-place" not in json.dumps(body) and "manifest" not in json.dumps(body)
    assert "no index" in body["message"]
    status = client.get("/v1/admin/status", headers={"X-API-Key": ADMIN_KEY}).json()
    assert "secret-place" in status["last_error"]       # the details, behind the admin key


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/docs"])
def test_every_html_page_has_a_csp_and_cannot_be_framed(app_client, path):
    resp = app_client.get(path)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["x-frame-options"] == "DENY"
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', resp.text))   # offline


def test_docs_page_loads_nothing_from_another_origin(app_client):
    page = app_client.get("/docs").text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page):
        if not asset.startswith(("data:", "#")):
            assert app_client.get(f"/{asset.lstrip('/')}").status_code == 200, asset
    assert app_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("metadata", [
    '{"category": "top\\u0000"}', '{"cat\\u0000egory": "top"}', '{"\\ud800": "x"}',
    '{"category": "\\udc00"}', '{"nested": {"k\\u001b": 1}}', '{"tags": ["ok", "a\\u0007"]}',
    '{"ca\\ntegory": "top"}',
])
def test_put_metadata_with_control_characters_is_422(make_client, metadata):
    client = make_client()
    resp = client.put("/v1/admin/items/sku-new", data={"metadata": metadata},
                      files=image_file(image_bytes()), headers={"X-API-Key": ADMIN_KEY})
    error_of(resp, 422, "validation_error")
    assert client.get("/v1/items/sku-new").status_code == 404


def test_put_metadata_text_may_hold_tabs_and_newlines(make_client):
    client = make_client()
    resp = client.put("/v1/admin/items/sku-new", data={"metadata": '{"note": "a\\tb\\nc"}'},
                      files=image_file(image_bytes()), headers={"X-API-Key": ADMIN_KEY})
    assert resp.status_code == 200, resp.text
    assert resp.json()["item"]["metadata"] == {"note": "a\tb\nc"}
