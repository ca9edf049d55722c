"""Catalogs (indexer/catalog.py): CSV, JSON lines and image folders; bad catalogs."""

from __future__ import annotations

import json

import pytest

from indexer.catalog import MAX_ID_LENGTH, CatalogError, id_problem, load_catalog


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


@pytest.mark.parametrize("name", ["c.csv", "c.jsonl"])
def test_a_catalog_that_is_not_utf8_is_a_catalog_error(tmp_path, name):
    (tmp_path / name).write_bytes("id,image,colour\na,x.jpg,gr\u00fcn\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8 text"):
        load_catalog(tmp_path / name)


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


@pytest.mark.parametrize("item_id", ["dresses/a.jpg", "a b", "ünï✓", "100%", "...", "a/../b",
                                     "../up", "./here", "image", "image/x", "https://s/x.jpg"])
def test_servable_ids_are_accepted(item_id):
    assert id_problem(item_id) is None


@pytest.mark.parametrize(("item_id", "reason"), [
    ("", "empty"), ("  ", "empty"), (".", "dot segments"), ("..", "dot segments"),
    ("x" * (MAX_ID_LENGTH + 1), "longer than"), ("a\x00b", "control character"),
    ("a\nb", "control character"), ("a\x7f", "control character"),
    ("a\x85", "control character"), ("\ud800", "lone surrogate"),
    ("tops/image", "'/image'"),
])
def test_unservable_ids_have_a_reason(item_id, reason):
    assert reason in (id_problem(item_id) or "")


def test_an_id_at_the_length_limit_is_servable():
    assert id_problem("x" * MAX_ID_LENGTH) is None


@pytest.mark.parametrize("bad_id", ["..", ".", "x/image", "a\tb"])
def test_csv_and_jsonl_catalogs_refuse_unservable_ids_with_the_line(tmp_path, bad_id):
    (tmp_path / "c.csv").write_text(f'id,image\nok,a.jpg\n"{bad_id}",b.jpg\n')
    with pytest.raises(CatalogError, match="line 3: id .* cannot be served"):
        load_catalog(tmp_path / "c.csv")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": bad_id, "image": "b.jpg"}) + "\n")
    with pytest.raises(CatalogError, match="line 1: id .* cannot be served"):
        load_catalog(tmp_path / "c.jsonl")


def test_jsonl_catalog_refuses_a_lone_surrogate_id(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"id": "a\\ud800", "image": "b.jpg"}\n')
    with pytest.raises(CatalogError, match="lone surrogate"):
        load_catalog(tmp_path / "c.jsonl")


def test_folder_catalog_ids_are_servable_and_a_control_character_is_refused(tmp_path):
    for name in ("tops/summer sale/a 1.jpg", "ünï/✓.png", "pct/100%.png", "a..b/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"...")
    ids = [it.id for it in load_catalog(tmp_path).items]
    assert sorted(ids) == sorted(["tops/summer sale/a 1.jpg", "ünï/✓.png", "pct/100%.png",
                                  "a..b/c.jpg"])
    assert all(id_problem(i) is None for i in ids)
    (tmp_path / "tops" / "new\nline.jpg").write_bytes(b"...")
    with pytest.raises(CatalogError, match="control character"):
        load_catalog(tmp_path)
