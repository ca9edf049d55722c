"""Folding live changes into a new version (indexer/live/fold.py) through the one-shot job:
an update whose live deletes leave nothing, and a live put the catalog catches up with when
the catalog holds its metadata as text."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from testkit import index_catalog, random_unit_vectors, read_rows, write_rows

from indexer.cli import EXIT_OK, EXIT_USAGE
from indexer.live.fold import read_layer, same_metadata
from indexer.reader import CatalogIndex


def _vectors(idx: CatalogIndex, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {a: random_unit_vectors(rng, (idx.dim,)) for a in idx.attributes}


def test_update_after_every_item_was_deleted_live_refuses_and_keeps_everything(
        dataset, catalog, tmp_path, capsys):
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        version, ids = idx.version, [it.id for it in idx.list_items(0, 1000)[1]]
        for item_id in ids:
            assert idx.delete_item(item_id) is not None
        assert len(idx) == 0
    capsys.readouterr()
    assert index_catalog(catalog, dataset.checkpoint, out, "--update") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "deleted every item" in err and f"{len(ids)} live delete(s)" in err, err
    assert "rejected" not in err
    with CatalogIndex.open(out) as idx:        # the served version and the journal are kept
        status = idx.live_status()
        assert idx.version == version and len(idx) == 0
        assert status is not None and status.pending == len(ids)


def test_a_live_put_with_numbers_is_dropped_once_the_csv_catalog_has_it_as_text(
        dataset, catalog, tmp_path):
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out) == EXIT_OK
    rows = read_rows(catalog)
    columns = list(rows[0]) + ["size", "price", "flag"]
    meta = {c: rows[0][c] for c in rows[0] if c not in ("id", "image")}
    with CatalogIndex.open(out) as idx:
        for n, item_id in enumerate(("caught-up", "still-live")):
            image = (catalog.parent / rows[n]["image"]).read_bytes()
            idx.put_item(item_id, image, {**meta, "size": 38, "price": 9.5, "flag": True},
                         _vectors(idx, n))
    for n, (item_id, size) in enumerate((("caught-up", "38"), ("still-live", "39"))):
        copy = f"{item_id}.img"                # the same bytes in the catalog's folder
        shutil.copyfile(catalog.parent / rows[n]["image"], catalog.parent / copy)
        rows.append({**rows[0], "id": item_id, "image": copy, "size": size, "price": "9.5",
                     "flag": "true"})
    write_rows(catalog, rows, fieldnames=columns)
    assert index_catalog(catalog, dataset.checkpoint, out, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert set(read_layer(idx.published.root)) == {"still-live"}
        assert idx.get("caught-up").metadata["size"] == "38"       # the catalog's row now
        assert idx.get("still-live").metadata["size"] == 38        # the live put still


@pytest.mark.parametrize(("catalog_meta", "put", "same"), [
    ({"n": "3", "x": "9.5", "b": "true", "l": "[1, 2]"}, {"n": 3, "x": 9.5, "b": True,
                                                          "l": [1, 2]}, True),
    ({"n": "3", "empty": ""}, {"n": 3}, True),          # a CSV column the put leaves out
    ({"n": "", "m": "1"}, {"n": None, "m": "1"}, True),  # null: an empty cell
    ({"n": 3, "b": True}, {"n": 3, "b": True}, True),   # a JSONL catalog keeps JSON types
    ({"n": "3"}, {"n": "3.0"}, False),
    ({"n": "3"}, {"n": 3.5}, False),
    ({"b": "True"}, {"b": True}, False),                # JSON text is `true`
    ({"n": 1}, {"n": True}, False),                     # equal in Python, not in JSON
    ({"n": 3}, {"n": "3"}, False),                      # the catalog has a number
    ({"n": 3}, {}, False),
    ({}, {"n": ""}, False),                              # the catalog lacks the key
])
def test_same_metadata_compares_as_the_catalog_holds_values(catalog_meta, put, same):
    assert same_metadata(catalog_meta, put) is same
