"""API keys, CORS, upload limits, image roots and load shedding, over HTTP."""

from __future__ import annotations

import threading

import httpx
import pytest
from PIL import Image
from testkit import encode_image

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
