"""Grouping, re-ranking and composed queries over HTTP against a real server and index.

The catalog is the tiny fixture's with a `product_id` column (3 items per product) and an
`edition` column (one "limited" item); its flat index is built from an embeddings store, so
the expected scores come from the stored vectors, computed here by brute force.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from testkit import error_of, image_file, ok

from indexer.embed.store import EmbeddingStore
from indexer.items import Hit, Item
from model import load_model
from model.imageio import open_image
from service.grouping import grouped

N_ITEMS = 50   # the tiny fixture: 40 train + 2 valid + 8 test


@pytest.fixture(scope="module")
def server(products_server):
    """The product catalog's shared server, serving its flat index."""
    products_server.serve(products_server.products.index_dir)
    return products_server.process


@pytest.fixture(scope="module")
def store(products):
    return EmbeddingStore(products.embeddings)


@pytest.fixture(scope="module")
def ids(fx):
    return fx.item_ids()


@pytest.fixture(scope="module")
def model(fx):
    return load_model(fx.checkpoint, device="cpu")


def first_per_group(results, column, k):
    """The reference answer: the best item of each group, from a full ungrouped ranking."""
    seen, out = set(), []
    for r in results:
        if r["metadata"][column] not in seen:
            seen.add(r["metadata"][column])
            out.append(r)
    return out[:k]


# ---------------------------------------------------------------- grouping


def _search(client, fx, kind, k, **extra):
    """One query of each search endpoint, for the same image/item."""
    data = {"k": str(k), **{key: str(v) for key, v in extra.items()}}
    if kind == "upload":
        return client.post("/v1/search", files=image_file(fx.image("test-000002")),
                           data={"attribute": "neckline", **data})
    if kind == "multi":
        return client.post("/v1/search/multi", files=image_file(fx.image("test-000002")),
                           data={"weights": '{"neckline": 2, "colour": 1}', **data})
    if kind == "compose":
        refs = [{"attribute": "neckline", "weight": 0.5, "image": 0},
                {"attribute": "colour", "weight": 0.5, "item_id": "train-000007"}]
        return client.post("/v1/search/compose",
                           files=[("images", ("q.jpg", fx.image("test-000002").read_bytes(),
                                              "image/jpeg"))],
                           data={"references": json.dumps(refs), **data})
    body = {"item_id": "test-000002", "attribute": "neckline", "k": k, **extra}
    return client.post("/v1/search/by-item", json=body)


@pytest.mark.parametrize("kind", ["upload", "multi", "by-item", "compose"])
def test_grouping_one_item_per_product_and_still_k(client, fx, kind):
    full = ok(_search(client, fx, kind, N_ITEMS))["results"]
    assert len(full) == N_ITEMS - (kind == "by-item")   # by-item leaves the item out
    for k in (1, 5, 12):
        body = ok(_search(client, fx, kind, k, group_by="product_id"))
        results = body["results"]
        assert len(results) == k, results                  # still k results
        groups = [r["group"] for r in results]
        assert len(set(groups)) == k                       # never two of one product
        assert groups == [r["metadata"]["product_id"] for r in results]
        assert [r["rank"] for r in results] == list(range(1, k + 1))
        # each is its product's best-scoring item, products in order of their best score
        want = first_per_group(full, "product_id", k)
        assert [r["id"] for r in results] == [r["id"] for r in want]
        assert [r["score"] for r in results] == pytest.approx([r["score"] for r in want],
                                                              abs=1e-5)
        assert body["query"]["group_by"] == "product_id"
    plain = ok(_search(client, fx, kind, 5))["results"]
    assert all(r["group"] is None for r in plain)


def test_grouping_fetches_deeper_than_the_first_page(client, ids):
    """A group whose only item ranks far down (beyond the first fetch of max(4k, 32) hits)
    is still found; groups beyond the index's are not invented."""
    rare = ids[-1]   # the one "limited" edition

    def deep_query():
        for attribute in ("pattern", "colour", "neckline", "sleeve_length"):
            for query in ids[:-1]:
                full = ok(client.post("/v1/search/by-item", json={
                    "item_id": query, "attribute": attribute, "k": N_ITEMS}))["results"]
                if [r["id"] for r in full].index(rare) >= 32:
                    return query, attribute, full
        pytest.fail("no query ranks the limited item beyond 32")

    query, attribute, full = deep_query()
    body = ok(client.post("/v1/search/by-item", json={
        "item_id": query, "attribute": attribute, "k": 2, "group_by": "edition"}))
    assert [r["group"] for r in body["results"]] == ["regular", "limited"]
    assert [r["id"] for r in body["results"]] == [full[0]["id"], rare]
    exhausted = ok(client.post("/v1/search/by-item", json={
        "item_id": query, "attribute": attribute, "k": 10, "group_by": "edition"}))
    assert len(exhausted["results"]) == 2


def test_grouping_respects_filters(client, fx):
    body = ok(_search(client, fx, "upload", 4, group_by="product_id",
                      filters=json.dumps({"split": "train"})))
    assert len(body["results"]) == 4
    assert all(r["metadata"]["split"] == "train" for r in body["results"])
    assert len({r["group"] for r in body["results"]}) == 4


@pytest.mark.parametrize("kind", ["upload", "multi", "by-item", "compose", "rerank"])
def test_unknown_group_column_is_422(client, fx, kind):
    if kind == "rerank":
        resp = client.post("/v1/rerank", data={
            "item_id": "train-000001", "attribute": "colour", "group_by": "nope",
            "candidates": '["train-000002"]'})
    else:
        resp = _search(client, fx, kind, 3, group_by="nope")
    error_of(resp, 422, "unknown_column")
    details = resp.json()["error"]["details"]
    assert details["group_by"] == "nope" and "product_id" in details["valid"]


def test_attributes_list_the_metadata_columns(client):
    columns = ok(client.get("/v1/attributes"))["metadata_columns"]
    assert {"product_id", "edition", "split", "category"} <= set(columns)


def test_grouped_deepens_geometrically_until_k_groups_or_exhausted():
    """The deepening loop on its own: a ranking of 100 items, groups of 10 consecutive."""

    ranking = [Hit(Item(i, f"i{i}", "", {"g": str(i // 10)}), 1.0 - i / 100)
               for i in range(100)]
    depths: list[int] = []

    def fetch(depth):
        depths.append(depth)
        return ranking[:depth]

    out = grouped(fetch, 5, "g", limit=100, max_depth=1000)
    assert [h.item.id for h, _ in out.hits] == ["i0", "i10", "i20", "i30", "i40"]
    assert depths == [32, 100]
    depths.clear()
    assert len(grouped(fetch, 20, "g", limit=100, max_depth=1000).hits) == 10  # exhausted
    depths.clear()
    capped = grouped(fetch, 5, "g", limit=100, max_depth=40)
    assert depths == [32, 40] and len(capped.hits) == 4


# ---------------------------------------------------------------- re-ranking


def test_rerank_equals_brute_force_on_stored_embeddings(client, store, ids):
    query = "train-000003"
    candidates = [ids[i] for i in (17, 4, 30, 9, 44, 21)] + ["sku-missing", ids[4], "gone"]
    body = ok(client.post("/v1/rerank", data={
        "item_id": query, "attribute": "neckline", "candidates": json.dumps(candidates)}))
    known = list(dict.fromkeys(c for c in candidates if c in ids))
    q = store.vectors("neckline", [query])[0]
    expected = store.vectors("neckline", known) @ q
    order = np.argsort(-expected, kind="stable")
    assert [r["id"] for r in body["results"]] == [known[i] for i in order]
    assert [r["score"] for r in body["results"]] == pytest.approx(
        [float(expected[i]) for i in order], abs=1e-5)
    assert body["unknown"] == ["sku-missing", "gone"]
    assert [r["rank"] for r in body["results"]] == list(range(1, len(known) + 1))
    assert body["query"]["source"] == "item" and body["query"]["k"] is None


def test_rerank_by_upload_with_weights(client, fx, store, model, ids):
    weights = {"colour": 3.0, "pattern": 1.0}
    candidates = ids[::3]
    body = ok(client.post("/v1/rerank", files=image_file(fx.image("test-000004")), data={
        "weights": json.dumps(weights), "candidates": json.dumps(candidates)}))
    image = open_image(fx.image("test-000004"))
    total = np.zeros(len(candidates))
    per_attr = {}
    for a, w in weights.items():
        q = model.embed([image], [a])[0]
        per_attr[a] = store.vectors(a, candidates) @ q
        total += w / sum(weights.values()) * per_attr[a]
    order = np.argsort(-total, kind="stable")
    got = body["results"]
    assert [r["id"] for r in got] == [candidates[i] for i in order]
    assert [r["score"] for r in got] == pytest.approx(total[order], abs=1e-4)
    for r, i in zip(got, order, strict=True):
        assert r["scores"] == pytest.approx({a: per_attr[a][i] for a in weights}, abs=1e-4)
    assert body["unknown"] == []
    assert body["timings"]["embed_ms"] >= 0 and body["timings"]["batch_size"] >= 1


def test_rerank_groups_and_validates(client, ids):
    candidates = ids[:12]
    body = ok(client.post("/v1/rerank", data={
        "item_id": ids[20], "attribute": "colour", "candidates": json.dumps(candidates),
        "group_by": "product_id"}))
    assert len(body["results"]) == 4      # 12 items, 3 per product
    assert len({r["group"] for r in body["results"]}) == 4
    empty = ok(client.post("/v1/rerank", data={
        "item_id": ids[20], "attribute": "colour", "candidates": '["x", "y"]'}))
    assert empty["results"] == [] and empty["unknown"] == ["x", "y"]
    too_many = json.dumps([f"id-{i}" for i in range(1001)])
    for data in (
        {"item_id": ids[0], "attribute": "colour", "candidates": too_many},
        {"item_id": ids[0], "attribute": "colour", "candidates": '{"a": 1}'},
        {"item_id": ids[0], "attribute": "colour", "candidates": "[1.5]"},
        {"item_id": ids[0], "attribute": "colour", "candidates": "[\"\"]"},
        {"item_id": ids[0], "candidates": "[]"},
        {"attribute": "colour", "candidates": "[]"},
        {"item_id": ids[0], "attribute": "colour", "weights": '{"colour": 1}',
         "candidates": "[]"},
        {"item_id": ids[0], "attribute": "colour"},
    ):
        error_of(client.post("/v1/rerank", data=data), 422, "validation_error")
    error_of(client.post("/v1/rerank", data={
        "item_id": ids[0], "attribute": "collar", "candidates": "[]"}), 422, "unknown_attribute")
    error_of(client.post("/v1/rerank", data={
        "item_id": "nope", "attribute": "colour", "candidates": "[]"}), 404, "item_not_found")


# ---------------------------------------------------------------- composed queries


def _compose(client, fx, refs, uploads=(), **data):
    files = [("images", ("q.jpg", fx.image(i).read_bytes(), "image/jpeg")) for i in uploads]
    return client.post("/v1/search/compose", files=files or None,
                       data={"references": json.dumps(refs),
                             **{k: str(v) for k, v in data.items()}})


def test_compose_with_one_reference_equals_plain_search(client, fx):
    plain = ok(client.post("/v1/search", files=image_file(fx.image("test-000005")),
                           data={"attribute": "neckline", "k": "8"}))["results"]
    composed = ok(_compose(client, fx, [{"attribute": "neckline", "weight": 0.7, "image": 0}],
                           ["test-000005"], k=8))
    assert [r["id"] for r in composed["results"]] == [r["id"] for r in plain]
    assert [r["score"] for r in composed["results"]] == pytest.approx(
        [r["score"] for r in plain], abs=1e-5)
    assert composed["query"]["weights"] == {"neckline": 1.0}
    assert composed["query"]["references"] == [
        {"attribute": "neckline", "weight": 1.0, "image": 0, "item_id": None, "value": None}]
    by_item = ok(client.post("/v1/search/by-item", json={
        "item_id": "train-000011", "attribute": "colour", "k": 8, "include_self": True}))
    composed = ok(_compose(client, fx, [{"attribute": "colour", "weight": 2,
                                         "item_id": "train-000011"}], k=8))
    assert [r["id"] for r in composed["results"]] == [r["id"] for r in by_item["results"]]
    assert [r["score"] for r in composed["results"]] == pytest.approx(
        [r["score"] for r in by_item["results"]], abs=1e-6)


def test_compose_ranks_by_weighted_sum_of_references(client, fx, store, ids):
    refs = [{"attribute": "neckline", "weight": 0.6, "item_id": "train-000001"},
            {"attribute": "colour", "weight": 0.3, "item_id": "test-000006"},
            {"attribute": "colour", "weight": 0.1, "item_id": "train-000020"}]
    body = ok(_compose(client, fx, refs, k=10))
    sims = {(r["attribute"], r["item_id"]):
            store.vectors(r["attribute"], ids) @ store.vectors(r["attribute"], [r["item_id"]])[0]
            for r in refs}
    total = sum(r["weight"] * sims[(r["attribute"], r["item_id"])] for r in refs)
    order = np.argsort(-total, kind="stable")[:10]
    assert [r["id"] for r in body["results"]] == [ids[i] for i in order]
    assert [r["score"] for r in body["results"]] == pytest.approx(total[order], abs=1e-5)
    colour = (0.3 * sims[("colour", "test-000006")] + 0.1 * sims[("colour", "train-000020")]) / 0.4
    for r, i in zip(body["results"], order, strict=True):
        assert r["scores"]["neckline"] == pytest.approx(sims[("neckline", "train-000001")][i],
                                                        abs=1e-5)
        assert r["scores"]["colour"] == pytest.approx(colour[i], abs=1e-5)
    assert body["query"]["weights"] == pytest.approx({"neckline": 0.6, "colour": 0.4})
    assert body["query"]["source"] == "compose"


def test_compose_mixes_uploads_and_items(client, fx, store, model, ids):
    refs = [{"attribute": "sleeve_length", "weight": 1, "image": 1},
            {"attribute": "pattern", "weight": 1, "item_id": "train-000030"},
            {"attribute": "neckline", "weight": 2, "image": 0}]
    body = ok(_compose(client, fx, refs, ["test-000007", "train-000002"], k=5))
    q0 = model.embed([open_image(fx.image("test-000007"))], ["neckline"])[0]
    q1 = model.embed([open_image(fx.image("train-000002"))], ["sleeve_length"])[0]
    total = (0.5 * (store.vectors("neckline", ids) @ q0)
             + 0.25 * (store.vectors("sleeve_length", ids) @ q1)
             + 0.25 * (store.vectors("pattern", ids) @ store.vectors("pattern",
                                                                     ["train-000030"])[0]))
    order = np.argsort(-total, kind="stable")[:5]
    assert [r["id"] for r in body["results"]] == [ids[i] for i in order]
    assert [r["score"] for r in body["results"]] == pytest.approx(total[order], abs=1e-4)
    assert body["timings"]["batch_size"] >= 2   # both uploads rode one forward pass


@pytest.mark.parametrize("refs,uploads,status,code", [
    ([{"attribute": "neckline", "weight": 1, "image": 1}], ["test-000001"], 422,
     "validation_error"),                                   # no upload 1
    ([{"attribute": "neckline", "weight": 1, "item_id": "train-000001"}], ["test-000001"],
     422, "validation_error"),                              # upload 0 unused
    ([{"attribute": "neckline", "weight": 1, "image": 0, "item_id": "train-000001"}],
     ["test-000001"], 422, "validation_error"),             # both sources
    ([{"attribute": "neckline", "weight": 1}], [], 422, "validation_error"),
    ([{"attribute": "neckline", "weight": -1, "item_id": "train-000001"}], [], 422,
     "validation_error"),
    ([{"attribute": "neckline", "weight": 0, "item_id": "train-000001"}], [], 422,
     "validation_error"),
    ([], [], 422, "validation_error"),
    ([{"attribute": "collar", "weight": 1, "item_id": "train-000001"}], [], 422,
     "unknown_attribute"),
    ([{"attribute": "colour", "weight": 1, "item_id": "nope"}], [], 404, "item_not_found"),
])
def test_compose_rejects_bad_references(client, fx, refs, uploads, status, code):
    error_of(_compose(client, fx, refs, uploads), status, code)


def test_compose_rejects_malformed_fields(client, fx):
    for raw in ("{", '{"attribute": "colour"}', "[1]", "[" * 5000):
        resp = client.post("/v1/search/compose", data={"references": raw})
        error_of(resp, 422, "validation_error")
    bad_image = client.post("/v1/search/compose",
                            files=[("images", ("x.jpg", b"not an image", "image/jpeg"))],
                            data={"references": '[{"attribute": "colour", "image": 0}]'})
    error_of(bad_image, 415, "unsupported_media_type")
    error_of(_compose(client, fx, [{"attribute": "colour", "item_id": "train-000001"}], k=0),
             422, "validation_error")


def test_compose_and_rerank_are_in_the_metrics(client, fx):
    ok(_compose(client, fx, [{"attribute": "colour", "weight": 1, "item_id": "train-000001"}],
                k=3))
    ok(client.post("/v1/rerank", data={"item_id": "train-000001", "attribute": "colour",
                                       "candidates": '["train-000002"]'}))
    error_of(client.post("/v1/rerank", data={"item_id": "train-000001", "attribute": "colour",
                                              "group_by": "nope",
                                              "candidates": '["train-000002"]'}),
             422, "unknown_column")
    text = client.get("/metrics").text
    for route in ("/v1/search/compose", "/v1/rerank"):
        assert f'asen_http_requests_total{{method="POST",route="{route}",status="200"}}' in text
    assert 'asen_rejected_requests_total{code="unknown_column"}' in text
    assert 'asen_stage_duration_seconds_count{stage="search"}' in text
