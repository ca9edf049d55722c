"""In-process tests of POST /v1/tag, value references in /v1/search/compose and the
``but_with`` shortcut of /v1/search and /v1/search/by-item (service/values.py), over the
fakes: the fake index's value prototypes (tests/service_fakes.py, VALUE_NAMES)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_fakes import (
    ATTRIBUTES,
    FAKE_CALIBRATION,
    VALUE_NAMES,
    FakeEmbedder,
    served_index,
    write_manifest,
)
from testkit import error_of, image_file, tagged_with

from model.manipulation import (
    DEFAULT_TARGET_WEIGHT,
    agreement_of,
    agreement_scores,
    manipulate,
    same_item,
)
from model.tagging import Tagger


def _upload(client, fake_catalog, item_id: str, path: str, **fields: str):
    return client.post(path, data=fields, files=image_file(fake_catalog.image_bytes(item_id)))


def _compose(client, fake_catalog, refs: list, image_of: str | None = None, **fields: str):
    files = None if image_of is None else [
        ("images", image_file(fake_catalog.image_bytes(image_of))["image"])]
    return client.post("/v1/search/compose", data={"references": json.dumps(refs), **fields},
                       files=files)


def test_tag_lists_every_attribute_with_its_top_three(app_client, fake_catalog):
    r = _upload(app_client, fake_catalog, "sku-04", "/v1/tag")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["tags"]) == list(ATTRIBUTES)
    assert body["values_source"] == "index" and body["calibrated"] is True
    index = served_index(app_client)
    for attribute, tag in body["tags"].items():
        assert tag["values"] == VALUE_NAMES[attribute]
        ranked = [tag["value"]] + [a["value"] for a in tag["alternatives"]]
        assert len(ranked) == min(3, len(VALUE_NAMES[attribute])) == len(set(ranked))
        confidences = [tag["confidence"]] + [a["confidence"] for a in tag["alternatives"]]
        assert confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1 + 1e-6
        # the upload of a catalog item is tagged as the index tags its stored vectors
        stored = index.get("sku-04").tags[attribute]
        if not stored.is_label:
            assert stored.value == tag["value"]
            assert stored.confidence == pytest.approx(tag["confidence"], abs=1e-5)
    assert body["tags"]["colour"]["value"] == "c4"   # its own colour's prototype is nearest
    assert body["timings"]["batch_size"] == 1


def test_tag_embeds_the_upload_once_for_every_attribute(make_client, fake_catalog):
    embedder = FakeEmbedder()
    client = make_client(embedder=embedder)
    before = embedder.calls
    assert _upload(client, fake_catalog, "sku-01", "/v1/tag").status_code == 200
    assert embedder.calls == before + 1


@pytest.mark.parametrize("data, status, code", [
    (b"not an image", 415, "unsupported_media_type"),
    (b"", 422, "empty_image"),
])
def test_tag_refuses_what_search_refuses(app_client, data, status, code):
    r = app_client.post("/v1/tag", files=image_file(data, "x.jpg"))
    error_of(r, status, code)


def test_tag_upload_too_large_is_413(make_client):
    client = make_client(max_upload_bytes=1024)
    error_of(client.post("/v1/tag", files=image_file(b"\xff" * 4096)), 413, "payload_too_large")


def test_value_reference_ranks_by_the_prototype(app_client, fake_catalog):
    r = _compose(app_client, fake_catalog, [{"attribute": "colour", "value": " C7 "}], k="3")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["references"] == [
        {"attribute": "colour", "weight": 1.0, "image": None, "item_id": None, "value": "c7"}]
    assert body["results"][0]["id"] == "sku-07"   # the only item labelled c7
    proto = served_index(app_client).prototypes()["colour"].get("c7").vector
    stored = served_index(app_client).embedding("sku-07", "colour")
    assert body["results"][0]["score"] == pytest.approx(float(stored @ proto), abs=1e-5)


def test_unknown_value_or_attribute_is_422_listing_the_known_values(app_client, fake_catalog):
    r = _compose(app_client, fake_catalog, [{"attribute": "collar", "value": "polo"}])
    err = error_of(r, 422, "unknown_value")
    assert err["details"]["valid"] == VALUE_NAMES["collar"]
    assert all(v in err["message"] for v in VALUE_NAMES["collar"])
    r = app_client.post("/v1/search/by-item", json={"item_id": "sku-01",
                                                     "but_with": {"colr": "v"}})
    err = error_of(r, 422, "unknown_attribute")
    assert err["details"]["values"] == VALUE_NAMES
    assert "round, v, square" in err["message"]


@pytest.mark.parametrize("ref", [
    {"attribute": "collar", "value": "v", "image": 0},
    {"attribute": "collar", "value": "v", "item_id": "sku-01"},
    {"attribute": "collar", "value": ""},
])
def test_a_value_reference_names_one_source(app_client, fake_catalog, ref):
    r = _compose(app_client, fake_catalog, [ref], image_of="sku-01" if "image" in ref else None)
    error_of(r, 422, "validation_error")


def _manipulated_ranking(index, item_id: str, targets: dict, k: int,
                         leave_out_same: bool) -> list[tuple[str, float]]:
    """The ranking of model.manipulation's query from the item's stored vectors: every item
    tagged with the targets' values (the fake catalog is smaller than the candidate pool) by
    agreement_scores, without the item's own (same_item) when ``leave_out_same``."""
    kept = [a for a in ATTRIBUTES if a not in targets]
    _, vecs = index.embeddings([item_id], kept)
    own = {a: vecs[a][0] for a in kept}
    mq = manipulate(own, index.prototypes(), targets, attributes=list(ATTRIBUTES))
    tagger = Tagger(index.prototypes(), index.calibration())
    ids = [h.item.id for h in index.search(kept[0], vecs[kept[0]], 1000)[0]
           if tagged_with(h.item, targets)]
    items, stored = index.embeddings(ids, list(ATTRIBUTES))
    scores = agreement_scores(mq, agreement_of(mq, own, tagger), stored, tagger)
    if leave_out_same:
        scores[same_item(own, stored)] = -np.inf
    order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])][:k]
    return [(items[i].id, round(float(scores[i]), 5)) for i in order]


def test_but_with_ranks_by_the_librarys_manipulated_query(app_client, fake_catalog):
    """Upload and by-item: the candidates of model.manipulation.manipulate's query (the
    weights are the composed query's with those references: 1 per kept attribute, the
    target's prototype at DEFAULT_TARGET_WEIGHT), ranked by agreement_scores."""
    kept = [a for a in ATTRIBUTES if a != "collar"]
    refs = [{"attribute": a, "weight": 1.0, "image": 0} for a in kept] + [
        {"attribute": "collar", "weight": DEFAULT_TARGET_WEIGHT, "value": "square"}]
    composed = _compose(app_client, fake_catalog, refs, image_of="sku-02", k="6").json()
    manipulated = _upload(app_client, fake_catalog, "sku-02", "/v1/search", k="6",
                          but_with=json.dumps({"collar": "Square"})).json()
    assert manipulated["query"]["but_with"] == {"collar": "square"}
    assert manipulated["query"]["attribute"] is None
    assert manipulated["query"]["weights"] == pytest.approx(composed["query"]["weights"])
    index = served_index(app_client)
    want = _manipulated_ranking(index, "sku-02", {"collar": "square"}, 6, leave_out_same=True)
    assert [(x["id"], round(x["score"], 5)) for x in manipulated["results"]] == want
    assert "sku-02" not in [x["id"] for x in manipulated["results"]]   # the upload's own item

    by_item = app_client.post("/v1/search/by-item", json={
        "item_id": "sku-02", "but_with": {"collar": "square"}, "k": 6, "include_self": True})
    assert by_item.status_code == 200, by_item.text
    assert by_item.json()["query"]["but_with"] == {"collar": "square"}
    want = _manipulated_ranking(index, "sku-02", {"collar": "square"}, 6, leave_out_same=False)
    assert "sku-02" in [i for i, _ in want]      # include_self: the item itself is ranked
    assert [(x["id"], round(x["score"], 5)) for x in by_item.json()["results"]] == want


def test_but_with_every_attribute_needs_no_embedding(make_client, fake_catalog):
    embedder = FakeEmbedder()
    client = make_client(embedder=embedder)
    before = embedder.calls
    targets = {"collar": "v", "sleeve": "short", "colour": "c7"}
    r = _upload(client, fake_catalog, "sku-09", "/v1/search", k="2",
                but_with=json.dumps(targets))
    assert r.status_code == 200, r.text
    assert embedder.calls == before   # the upload is decoded and checked, never embedded
    index = served_index(client)
    tagger = Tagger(index.prototypes(), index.calibration())
    assert [x["id"] for x in r.json()["results"]] == ["sku-07"]   # the only item with all 3
    top = r.json()["results"][0]
    # every attribute set: the mean of the item's probabilities of the target values
    probs = [tagger.probabilities(a, index.embedding(top["id"], a)[None, :])[0]
             [[p.name for p in index.prototypes()[a].values].index(v)] for a, v in targets.items()]
    assert top["score"] == pytest.approx(float(np.mean(probs)), abs=1e-5)
    assert _upload(client, fake_catalog, "sku-09", "/v1/search",
                   but_with=json.dumps({"collar": "v"}), attribute="collar").status_code == 422


def test_but_with_ranks_only_items_tagged_with_the_target(app_client):
    """The candidates are the items whose tag is the target value: a catalog label ("colour")
    admits only the items labelled with it, whatever their embeddings say; a filter on a
    target's attribute contradicts the target (422 conflicting_filter)."""
    r = app_client.post("/v1/search/by-item", json={"item_id": "sku-05",
                                                     "but_with": {"colour": "c3"}, "k": 5})
    assert r.status_code == 200, r.text
    assert [x["id"] for x in r.json()["results"]] == ["sku-03"]
    r = app_client.post("/v1/search/by-item", json={"item_id": "sku-05", "k": 5,
                                                     "but_with": {"collar": "v"}})
    assert {x["id"] for x in r.json()["results"]} == {"sku-04", "sku-07", "sku-10"}   # collar v
    for body in ({"filters": {"collar": "round"}}, {"filters": {"collar": ["v", "round"]}}):
        r = app_client.post("/v1/search/by-item", json={
            "item_id": "sku-05", "but_with": {"collar": "v"}, **body})
        assert error_of(r, 422, "conflicting_filter")["details"] == {"attributes": ["collar"]}
    r = app_client.post("/v1/search/by-item", json={
        "item_id": "sku-05", "but_with": {"collar": "v"}, "filters": {"category": "dress"}})
    assert r.json()["results"] == []             # both: every v collar is a top
    assert r.json()["query"]["filters"] == {"category": "dress"}


def test_by_item_but_with_leaves_the_item_out_and_404s_an_unknown_id(app_client):
    r = app_client.post("/v1/search/by-item", json={"item_id": "sku-02",
                                                     "but_with": {"sleeve": "long"}, "k": 11})
    assert r.status_code == 200
    assert "sku-02" not in [x["id"] for x in r.json()["results"]]
    r = app_client.post("/v1/search/by-item", json={"item_id": "nope",
                                                     "but_with": {"sleeve": "long"}})
    assert r.status_code == 404
    every = {"collar": "v", "sleeve": "long", "colour": "c1"}   # no attribute kept
    assert app_client.post("/v1/search/by-item", json={
        "item_id": "sku-02", "but_with": every}).status_code == 200
    r = app_client.post("/v1/search/by-item", json={"item_id": "nope", "but_with": every})
    assert error_of(r, 404, "item_not_found")["details"] == {"item_id": "nope"}


def _without_prototypes(fake_catalog):
    def bare(folder, live=True):
        index = fake_catalog.open_index(folder, live)
        index._prototypes, index._calibration = None, None   # an index built before tags
        return index
    return bare


def test_without_any_value_prototypes(make_client, fake_catalog):
    """An index built before tags, over a checkpoint without prototypes: /v1/tag answers no
    tags, a value reference is a 422 that says there are none."""
    client = make_client(open_index=_without_prototypes(fake_catalog))
    body = _upload(client, fake_catalog, "sku-01", "/v1/tag").json()
    assert body["tags"] == {} and body["values_source"] is None
    assert np.isfinite(body["timings"]["total_ms"])
    r = _compose(client, fake_catalog, [{"attribute": "collar", "value": "v"}])
    assert error_of(r, 422, "unknown_attribute")["details"]["values"] == {}
    error_of(client.post("/v1/tag", files=image_file(b"not an image")), 415)


def test_an_index_without_prototypes_uses_the_checkpoints(make_client, fake_catalog, tmp_path):
    """The checkpoint's prototypes (its optional ``prototypes`` key) and calibration, read
    when the snapshot is loaded, for an index that has none."""
    torch = pytest.importorskip("torch")
    from model.prototypes import prototypes_to_payload

    index_dir = tmp_path / "index"
    write_manifest(index_dir, checkpoint="values.ckpt")
    protos = served_index(make_client()).prototypes()
    torch.save({"prototypes": prototypes_to_payload(protos, FAKE_CALIBRATION)},
               index_dir / "values.ckpt")
    client = make_client(index_dir=index_dir, open_index=_without_prototypes(fake_catalog))
    body = _upload(client, fake_catalog, "sku-05", "/v1/tag").json()
    assert body["values_source"] == "checkpoint" and body["calibrated"] is True
    assert body["tags"]["colour"]["value"] == "c5"
    r = _compose(client, fake_catalog, [{"attribute": "colour", "value": "c5"}], k="1")
    assert r.json()["results"][0]["id"] == "sku-05"
