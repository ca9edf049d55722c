"""Tags and facets over HTTP (issue 22), on a live uvicorn serving an index built with tags
(tests/testkit/tagged.py): tags with results and items, filters on tagged attributes with
`min_confidence`, `group_by` a tagged attribute, facets of the whole index (adding up to the
item count) and of a search's top N, and a live put tagged at once."""

from __future__ import annotations

import json

import httpx
import pytest
from testkit import build_index, image_bytes, ok
from testkit.tagged import NEW_VALUE, VALUES, TaggedCatalog, tagged_catalog

from indexer.cli import EXIT_OK

ADMIN = {"X-API-Key": "tags-admin"}


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> TaggedCatalog:
    return tagged_catalog(tmp_path_factory.mktemp("tagged-http"))


@pytest.fixture(scope="module")
def server_env(tagged: TaggedCatalog) -> dict[str, str]:
    out = tagged.root / "index"
    assert build_index(tagged.store, tagged.catalog, out, "--checkpoint",
                       str(tagged.checkpoint)) == EXIT_OK
    return {"ASEN_INDEX_DIR": str(out), "ASEN_RELOAD_INTERVAL_S": "0",
            "ASEN_ADMIN_API_KEY": ADMIN["X-API-Key"],
            "ASEN_IMAGE_ROOTS": str(tagged.root)}


def _all_items(client: httpx.Client) -> list[dict]:
    """Every item with its tags (GET /v1/items/{id} each)."""
    page = ok(client.get("/v1/items", params={"limit": 200}))
    return [ok(client.get(f"/v1/items/{it['id']}")) for it in page["items"]]


def _by_item(client: httpx.Client, **body: object) -> dict:
    return ok(client.post("/v1/search/by-item", json={"item_id": "sku-001",
                                                      "attribute": "colour", **body}))


def test_every_item_has_a_tag_per_attribute_and_labels_stay_labels(client, tagged):
    items = _all_items(client)
    assert len(items) == len(tagged.ids)
    for item in items:
        assert sorted(item["tags"]) == sorted(VALUES)
        label = tagged.label_of(item["id"]).strip()
        neck = item["tags"]["neckline"]
        if label:
            assert neck["source"] == "label" and neck["confidence"] == 1.0
            assert neck["value"].casefold() == label.casefold()
        else:
            assert neck["source"] == "prediction" and 0 < neck["confidence"] <= 1
        assert item["tags"]["colour"]["source"] == "prediction"


def test_results_carry_the_items_tags(client):
    body = _by_item(client, k=5)
    assert body["results"] and body["facets"] is None
    for r in body["results"]:
        assert r["tags"] == ok(client.get(f"/v1/items/{r['id']}"))["tags"]


@pytest.mark.parametrize("min_confidence", [None, 0.0, 0.8, 1.0])
def test_filters_on_a_tagged_attribute_match_labels_and_confident_predictions(
        client, min_confidence):
    extra = {} if min_confidence is None else {"min_confidence": min_confidence}
    body = _by_item(client, k=100, filters={"colour": "Red"}, include_self=True, **extra)
    used = 0.5 if min_confidence is None else min_confidence      # ASEN_MIN_CONFIDENCE
    assert body["query"]["min_confidence"] == used
    red = [it for it in _all_items(client) if it["tags"]["colour"]["value"] == "red"]
    want = {it["id"] for it in red if it["tags"]["colour"]["confidence"] >= used}
    edge = {it["id"] for it in red if abs(it["tags"]["colour"]["confidence"] - used) < 1e-5}
    assert {r["id"] for r in body["results"]} - edge == want - edge   # (shown rounded to 1e-6)
    assert all(r["tags"]["colour"]["value"] == "red" for r in body["results"])
    # the same count as the facets at that confidence
    facets = ok(client.get("/v1/attributes", params={"min_confidence": used}))
    colour = next(a for a in facets["attributes"] if a["name"] == "colour")["facets"]
    counted = {v["value"]: v["total"] for v in colour["values"]}
    assert counted.get("red", 0) == len(body["results"])


def test_a_label_filter_keeps_the_labelled_items_at_any_confidence(client, tagged):
    body = _by_item(client, k=100, filters={"neckline": NEW_VALUE.lower()}, include_self=True,
                    min_confidence=1.0)
    assert sorted(r["id"] for r in body["results"]) == sorted(
        i for i in tagged.ids if tagged.label_of(i) == NEW_VALUE)


def test_group_by_a_tagged_attribute_groups_by_its_tag_value(client):
    body = _by_item(client, k=10, group_by="neckline")
    groups = [r["group"] for r in body["results"]]
    assert len(groups) == len(set(groups)) == len(VALUES["neckline"]) + 1   # + the new one
    assert all(r["group"] == r["tags"]["neckline"]["value"] for r in body["results"])


def test_facets_of_the_whole_index_add_up_to_the_item_count(client):
    body = ok(client.get("/v1/attributes"))
    n = ok(client.get("/readyz"))["items"]
    assert body["tagged_attributes"] == list(VALUES) and body["min_confidence"] == 0.0
    for attr in body["attributes"]:
        facets = attr["facets"]
        assert facets["items"] == n and facets["below_min_confidence"] == 0
        assert sum(v["total"] for v in facets["values"]) == n
        assert all(v["total"] == v["labelled"] + v["predicted"] for v in facets["values"])
    neckline = next(a for a in body["attributes"] if a["name"] == "neckline")["facets"]
    assert NEW_VALUE in [v["value"] for v in neckline["values"]]
    strict = ok(client.get("/v1/attributes", params={"min_confidence": 0.8}))
    colour = next(a for a in strict["attributes"] if a["name"] == "colour")["facets"]
    assert sum(v["total"] for v in colour["values"]) + colour["below_min_confidence"] == n
    assert colour["below_min_confidence"] > 0


def test_a_search_counts_the_facets_of_its_top_n(client):
    body = _by_item(client, k=3, facets=20, min_confidence=0.0)
    assert len(body["results"]) == 3 and body["query"]["facets"] == 20
    top20 = _by_item(client, k=20)["results"]
    for attr, facets in body["facets"].items():
        assert facets["items"] == 20
        assert sum(v["total"] for v in facets["values"]) == 20
        counted = {v["value"]: v["total"] for v in facets["values"]}
        values = [r["tags"][attr]["value"] for r in top20]
        assert counted == {v: values.count(v) for v in set(values)}


def test_bad_min_confidence_or_facets_are_422(client):
    for extra in ({"min_confidence": 1.5}, {"min_confidence": -0.1}, {"facets": 0},
                  {"facets": 100_000}):
        r = client.post("/v1/search/by-item", json={"item_id": "sku-001", "attribute": "colour",
                                                    **extra})
        assert r.status_code == 422, r.text
    assert client.get("/v1/attributes", params={"min_confidence": "2"}).status_code == 422


def test_a_live_put_is_tagged_at_once(client, tagged):
    image = image_bytes((40, 90, 200))
    r = client.put("/v1/admin/items/live-1", files={"image": ("x.png", image, "image/png")},
                   data={"metadata": json.dumps({"neckline": "V"})}, headers=ADMIN)
    item = ok(r)["item"]
    assert item["tags"]["neckline"] == {"value": "v", "confidence": 1.0, "source": "label"}
    assert item["tags"]["colour"]["source"] == "prediction"
    assert ok(client.get("/v1/items/live-1"))["tags"] == item["tags"]
    facets = ok(client.get("/v1/attributes"))
    for attr in facets["attributes"]:
        assert sum(v["total"] for v in attr["facets"]["values"]) == len(tagged.ids) + 1
    found = _by_item(client, k=100, filters={"neckline": "v"}, min_confidence=1.0)["results"]
    assert "live-1" in {r["id"] for r in found}
    ok(client.delete("/v1/admin/items/live-1", headers=ADMIN))

