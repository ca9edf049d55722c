"""In-process tests of service/routers/attributes.py: GET /v1/attributes."""

from __future__ import annotations

from service_fakes import API_KEY, ATTRIBUTES, CATALOG, INDEX_VERSION, N_VALUES
from testkit import error_of


def test_attributes_lists_names_sizes_types_and_metadata_columns(app_client):
    r = app_client.get("/v1/attributes")
    assert r.status_code == 200
    body = r.json()
    assert [{k: a[k] for k in ("name", "n_values", "index_size", "index_type")}
            for a in body["attributes"]] == [
        {"name": a, "n_values": N_VALUES[a], "index_size": len(CATALOG), "index_type": "flat"}
        for a in ATTRIBUTES]
    assert body["metadata_columns"] == ["category", "colour", "product_id"]
    assert body["index_version"] == INDEX_VERSION
    assert body["model"] == {"version": "f" * 12, "checkpoint": "fake.ckpt", "config": "fake",
                             "dim": 8, "precision": "fp32", "device": "cpu"}


def test_attributes_need_the_api_key_when_one_is_set(make_client):
    client = make_client(api_key=API_KEY)
    r = client.get("/v1/attributes")
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    error_of(client.get("/v1/attributes", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert client.get("/v1/attributes", headers={"X-API-Key": API_KEY}).status_code == 200
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    assert client.get("/v1/attributes", headers=bearer).status_code == 200
