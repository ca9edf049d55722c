"""Tags at build time (issue 22): `indexer build` makes the catalog's prototypes from its label
column, merges them over the checkpoint's, records them, and tags every item for every
attribute; filters match labels and confident predictions; facets add up; live puts are tagged
the same way; `--update` keeps the tags in step; `--no-tags` makes none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from testkit import build_index
from testkit.tagged import (
    NEW_VALUE,
    TEMPERATURES,
    VALUES,
    TaggedCatalog,
    tagged_catalog,
    write_store,
)
from testkit.tagged import write_catalog as write_tagged_catalog

from indexer.cli import EXIT_OK
from indexer.filters import TagFilters
from indexer.reader import CatalogIndex


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> TaggedCatalog:
    return tagged_catalog(tmp_path_factory.mktemp("tagged"))


@pytest.fixture(scope="module")
def index_dir(tagged: TaggedCatalog) -> Path:
    """The tagged catalog's index (read-only: tests that change it copy it)."""
    out = tagged.root / "index"
    assert build_index(tagged.store, tagged.catalog, out, "--checkpoint",
                       str(tagged.checkpoint)) == EXIT_OK
    return out


def _expected(idx: CatalogIndex, attribute: str, vectors: np.ndarray) -> tuple[list[str],
                                                                               np.ndarray]:
    """Nearest prototype and its temperature-scaled softmax probability, computed here."""
    protos = idx.prototypes()
    assert protos is not None
    ap = protos[attribute]
    z = vectors.astype(np.float64) @ ap.matrix().T.astype(np.float64) / TEMPERATURES[attribute]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return [ap.values[j].name for j in p.argmax(axis=1)], p.max(axis=1)


def _all_items(idx: CatalogIndex) -> list:
    return idx.list_items(0, 10_000)[1]


def test_every_item_has_a_tag_per_attribute_labels_kept_and_predictions_calibrated(
        tagged, index_dir):
    with CatalogIndex.open(index_dir) as idx:
        items = _all_items(idx)
        assert len(items) == len(tagged.ids)
        for attr in VALUES:
            values, conf = _expected(idx, attr, tagged.vectors[attr])
            for item in items:
                tag = item.tags[attr]
                n = tagged.ids.index(item.id)
                label = tagged.labels[n].strip() if attr == "neckline" else ""
                if label:       # the catalog's own label, canonical spelling
                    known = {v.casefold(): v for v in VALUES[attr]}
                    assert (tag.value, tag.confidence, tag.source) == (
                        known.get(label.casefold(), label), 1.0, "label")
                else:
                    assert tag.source == "prediction" and tag.value == values[n]
                    assert tag.confidence == pytest.approx(conf[n], abs=1e-5)


def test_manifest_records_where_each_prototype_came_from_and_how_many_made_it(
        tagged, index_dir):
    with CatalogIndex.open(index_dir) as idx:
        section = idx.manifest.extra["tags"]
        protos = idx.prototypes()
        calibration = idx.calibration()
    assert (index_dir / section["prototypes"]).is_file()
    labels = [x.strip().casefold() for x in tagged.labels if x.strip()]
    neckline = section["values"]["neckline"]
    # the catalog's labels win: every labelled value is the catalog's, with its count ...
    assert {v: d["count"] for v, d in neckline.items() if d["source"] == "catalog"} == {
        name: labels.count(name.casefold()) for name in [*VALUES["neckline"], NEW_VALUE]
        if name.casefold() in labels}
    assert NEW_VALUE in neckline          # ... a new one included
    assert {d["source"] for d in section["values"]["colour"].values()} == {"train"}
    assert section["items"]["neckline"] == {"labelled": len(labels),
                                            "predicted": len(tagged.ids) - len(labels)}
    assert section["items"]["colour"] == {"labelled": 0, "predicted": len(tagged.ids)}
    assert section["checkpoint"] == str(tagged.checkpoint)
    assert calibration is not None and dict(calibration.temperatures) == TEMPERATURES
    assert section["calibration"]["fitted_on"] == calibration.fitted_on
    assert protos is not None and [p.name for p in protos["colour"].values] == VALUES["colour"]


@pytest.mark.parametrize("min_confidence", [0.0, 0.6, 0.8, 1.0])
def test_a_filter_on_a_tagged_attribute_matches_labels_and_confident_predictions(
        index_dir, min_confidence):
    with CatalogIndex.open(index_dir) as idx:
        items = _all_items(idx)
        for attr, value in (("neckline", "V"), ("colour", "red"), ("neckline", NEW_VALUE)):
            want = sorted(it.row for it in items if it.tags[attr].value.casefold()
                          == value.casefold() and it.tags[attr].confidence >= min_confidence)
            got = idx.allowed_rows(TagFilters({attr: value}, min_confidence))
            assert got.tolist() == want
        labelled_v = [it.row for it in items if it.tags["neckline"].value == "v"
                      and it.tags["neckline"].source == "label"]
        assert set(labelled_v) <= set(idx.allowed_rows(TagFilters({"neckline": "v"}, 1.0)))
        # metadata filters still match metadata; a search keeps to the allowed rows
        both = TagFilters({"neckline": ["v", "round"], "product_id": "p-1"}, min_confidence)
        assert all(it.metadata["product_id"] == "p-1" and it.tags["neckline"].value in
                   ("v", "round") for it in idx.items_by_row(idx.allowed_rows(both)).values())
        query = np.ones((1, idx.dim), np.float32) / np.sqrt(idx.dim)
        hits = idx.search("colour", query, 200, TagFilters({"colour": "red"}, min_confidence))
        assert {h.item.row for h in hits[0]} == set(
            idx.allowed_rows(TagFilters({"colour": "red"}, min_confidence)).tolist())


def test_facets_add_up_to_the_item_count(tagged, index_dir):
    with CatalogIndex.open(index_dir) as idx:
        items = _all_items(idx)
        for attr in VALUES:
            facets = idx.facets(attr)
            assert sum(f.total for f in facets) == len(idx) == len(tagged.ids)
            for f in facets:
                mine = [it.tags[attr] for it in items if it.tags[attr].value == f.value]
                assert (f.labelled, f.predicted) == (sum(t.source == "label" for t in mine),
                                                     sum(t.source == "prediction" for t in mine))
            strict = idx.facets(attr, min_confidence=0.99)
            assert sum(f.total for f in strict) == sum(
                it.tags[attr].confidence >= 0.99 for it in items)
        rows = [it.row for it in items[:7]]
        assert sum(f.total for f in idx.facets("colour", rows)) == 7
        with pytest.raises(KeyError):
            idx.facets("no_such_attribute")


def test_a_live_put_is_tagged_as_the_build_tags(tagged, index_dir, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(index_dir.parent / ".index.versions", tmp_path / ".index.versions",
                    symlinks=True)
    out.symlink_to(Path(tmp_path / ".index.versions" / Path(index_dir.resolve()).name))
    vec = {a: v[5] for a, v in tagged.vectors.items()}          # item 5's vectors, unlabelled
    with CatalogIndex.open(out) as idx:
        before = idx.get("sku-005")
        assert before is not None
        idx.put_item("live-1", b"\x89PNG fake", {"product_id": "p-live"}, vec)
        idx.put_item("live-2", b"\x89PNG fake 2", {"neckline": " Square"}, vec)
        one, two = idx.get("live-1"), idx.get("live-2")
        assert one is not None and two is not None
        for attr in VALUES:   # the same vectors get the same predictions
            assert one.tags[attr].value == before.tags[attr].value
            assert one.tags[attr].confidence == pytest.approx(before.tags[attr].confidence,
                                                              abs=1e-6)
            assert one.tags[attr].source == "prediction"
        assert (two.tags["neckline"].value, two.tags["neckline"].source) == ("square", "label")
        value = one.tags["colour"].value
        assert one.row in idx.allowed_rows(TagFilters({"colour": value}, 0.0))
        assert sum(f.total for f in idx.facets("colour")) == len(idx) == len(tagged.ids) + 2
        square = {f.value: f for f in idx.facets("neckline", [two.row])}
        assert square["square"].labelled == 1


def test_update_keeps_the_tags_of_unchanged_items_and_tags_the_new_and_changed(
        tagged, index_dir, tmp_path):
    out = tmp_path / "index"
    assert build_index(tagged.store, tagged.catalog, out, "--checkpoint",
                       str(tagged.checkpoint)) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        before = {it.id: it.tags for it in _all_items(idx)}
    ids = tagged.ids[1:] + ["sku-new"]                    # sku-000 removed, sku-new added
    vectors = {a: np.concatenate([v[1:], v[3:4]]) for a, v in tagged.vectors.items()}
    vectors["colour"][ids.index("sku-002")] = tagged.vectors["colour"][7]   # changed image
    labels = tagged.labels[1:] + ["round"]
    labels[ids.index("sku-004")] = "square"                # relabelled
    store = write_store(tmp_path / "emb2", ids, vectors, salt={"sku-002": "changed"})
    catalog = write_tagged_catalog(tmp_path / "catalog2.csv", ids, labels)
    assert build_index(store, catalog, out, "--checkpoint", str(tagged.checkpoint),
                       "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.extra["update"]["added"] == 1
        after = {it.id: it.tags for it in _all_items(idx)}
    assert set(after) == set(ids)
    assert after["sku-new"]["neckline"].source == "label"
    assert after["sku-new"]["colour"].value == before["sku-003"]["colour"].value
    assert after["sku-002"]["colour"].value == before["sku-007"]["colour"].value
    assert after["sku-004"]["neckline"].value == "square"
    assert after["sku-004"]["neckline"].source == "label"
    same = [i for i in ids if i not in ("sku-new", "sku-002", "sku-004")]
    assert all(after[i]["colour"] == before[i]["colour"] for i in same)   # colour: no labels
    assert all(after[i]["neckline"].value == before[i]["neckline"].value
               for i in same if before[i]["neckline"].source == "label")


def test_no_tags_builds_an_index_without_tags_whose_filters_match_metadata(tagged, tmp_path):
    out = tmp_path / "index"
    assert build_index(tagged.store, tagged.catalog, out, "--checkpoint",
                       str(tagged.checkpoint), "--no-tags") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.prototypes() is None and idx.calibration() is None
        assert "tags" not in idx.manifest.extra
        assert all(not it.tags for it in _all_items(idx))
        assert idx.facets("neckline") == []
        rows = idx.allowed_rows({"neckline": "v"})
        assert {it.metadata["neckline"] for it in idx.items_by_row(rows).values()} == {"v"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert "tags" not in manifest


@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq", "ivfpq_refine"])
def test_update_tags_every_item_on_every_index_type(tagged, tmp_path, index_type):
    """An update re-tags from the index's stored vectors (ivfpq: its PQ reconstructions)."""
    out = tmp_path / "index"
    args = ["--checkpoint", str(tagged.checkpoint), "--index-type", index_type,
            "--target-recall", "0"]
    assert build_index(tagged.store, tagged.catalog, out, *args) == EXIT_OK
    ids = tagged.ids + ["sku-new"]
    vectors = {a: np.concatenate([v, v[5:6]]) for a, v in tagged.vectors.items()}
    store = write_store(tmp_path / "emb2", ids, vectors)
    catalog = write_tagged_catalog(tmp_path / "catalog2.csv", ids, tagged.labels + [""])
    assert build_index(store, catalog, out, *args, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        items = {it.id: it for it in _all_items(idx)}
        assert set(items) == set(ids)
        assert all(set(it.tags) == set(VALUES) for it in items.values())
        assert items["sku-new"].tags["colour"].value == items["sku-005"].tags["colour"].value
        assert sum(f.total for f in idx.facets("neckline")) == len(ids)
