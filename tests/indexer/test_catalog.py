"""Catalogs (indexer/catalog.py): CSV, JSON lines and image folders; bad catalogs."""

from __future__ import annotations

import json

import pytest

from indexer.catalog import CatalogError, load_catalog


def test_csv_catalog_paths_and_metadata(tmp_path):
    (tmp_path / "c.csv").write_text("id,image,colour\na,img/a.jpg,red\nb,/abs/b.png,blue\n")
    cat = load_catalog(tmp_path / "c.csv")
    assert [it.id for it in cat.items] == ["a", "b"]
    assert cat.items[0].image == str(tmp_path / "img" / "a.jpg")
    assert cat.items[1].image == "/abs/b.png"
    assert cat.items[0].metadata == {"colour": "red"}
    assert len(cat.sha256) == 64


@pytest.mark.parametrize("text, message", [
    ("id,picture\na,x.jpg\n", "lacks column"),
    ("id,image\na,x.jpg\n,y.jpg\n", "empty or missing 'id'"),
    ("id,image\na,x.jpg\nb,y.jpg\na,z.jpg\n", "duplicate ids"),
])
def test_bad_csv_catalogs(tmp_path, text, message):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(tmp_path / "c.csv")


def test_jsonl_catalog(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": 7, "image": "a.jpg", "tags": ["x"]})
                                      + "\n\n" + json.dumps({"id": "8", "image": "b.jpg"}) + "\n")
    cat = load_catalog(tmp_path / "c.jsonl")
    assert [it.id for it in cat.items] == ["7", "8"] and cat.items[0].metadata == {"tags": ["x"]}
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "image": "a.jpg"}\n[1, 2]\n')
    with pytest.raises(CatalogError, match="line 2"):
        load_catalog(tmp_path / "bad.jsonl")
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.csv")


def test_folder_catalog_ids_are_relative_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/b/x.JPG", "a/y.png", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"...")
    cat = load_catalog(tmp_path)
    assert [it.id for it in cat.items] == ["a/y.png", "a/b/x.JPG"]
    assert cat.items[1].image == str(tmp_path / "a" / "b" / "x.JPG")
