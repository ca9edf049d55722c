"""Indexer building blocks: catalogs, the embeddings store, index helpers, layout."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from indexer.build import faiss_index as fx
from indexer.catalog import CatalogError, load_catalog
from indexer.embed.store import EmbeddingStore, StoreError
from indexer.layout import IndexLayout, IndexLockedError


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


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.normal(size=shape).astype("f4")
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_embedding_store_commits_supersedes_and_compacts(tmp_path):
    store = EmbeddingStore(tmp_path / "emb")
    v = _unit(np.random.default_rng(0), (5, 2, 4))
    attrs = ["collar", "sleeve"]
    store.write([f"i{k}" for k in range(5)], [f"s{k}" for k in range(5)], v, attrs)
    store.write(["i1", "i9"], ["s1b", "s9"], v[:2][:, ::-1], attrs, dtype="float16")
    (tmp_path / "emb" / ".part-000002.parquet.tmp-1").write_bytes(b"torn, never renamed")
    again = EmbeddingStore(tmp_path / "emb")
    assert again.part_count == 2 and len(again) == 6 and again.attributes == attrs
    assert again.sha("i1") == "s1b" and again.dim == 4            # the later part wins
    got = again.vectors("sleeve", ["i4", "i1", "i0"])
    np.testing.assert_allclose(got, np.stack([v[4, 1], v[0, 0], v[0, 1]]), atol=1e-3)
    np.testing.assert_allclose(again.row_by_sha("s2"), v[2])
    assert again.compact({"i0", "i1", "i2", "i9"}) == 3          # i3, i4 gone; old i1 too
    final = EmbeddingStore(tmp_path / "emb")
    assert sorted(final.where) == ["i0", "i1", "i2", "i9"] and final.sha("i1") == "s1b"
    np.testing.assert_allclose(final.vectors("collar", ["i1"]), v[:1, 1], atol=1e-3)
    with EmbeddingStore.writer_lock(tmp_path / "emb"), pytest.raises(IndexLockedError):
        EmbeddingStore.writer_lock(tmp_path / "emb").acquire()
    v[0, 0] *= 2                                               # not unit-norm: refused
    EmbeddingStore(tmp_path / "bad").write(["x"], ["s"], v[:1], attrs)
    with pytest.raises(StoreError, match="norm"):
        EmbeddingStore(tmp_path / "bad").vectors("collar", ["x"])


def test_update_and_extract_keep_ids():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16)).astype("f4")
    ids = np.arange(50, dtype=np.int64) * 10
    for kind in ("flat", "hnsw"):
        spec = fx.resolve_spec(kind, 50, 16)
        index = fx.build(spec, 16, ids, x.__getitem__)
        index = fx.update(index, spec, np.array([0, 100]), np.array([100, 999]), x[:2] * 3)
        got_ids, got = fx.extract(index)
        order = np.argsort(got_ids)
        assert list(got_ids[order][:3]) == [10, 20, 30] and got_ids.max() == 999
        assert len(got_ids) == 50 and 100 in got_ids
        np.testing.assert_allclose(got[order][-1], x[1] * 3)
    spec = fx.resolve_spec("ivfpq", 50, 16, {"m": 4, "nbits": 4})
    index = fx.build(spec, 16, ids, x.__getitem__)
    index = fx.update(index, spec, np.array([0]), np.array([7]), x[:1])
    assert index.ntotal == 50
    fx.prepare_reader(index, spec)
    assert fx.reconstruct(index, 7) is not None and fx.reconstruct(index, 0) is None
    with pytest.raises(ValueError):
        fx.extract(index)


def test_publish_swaps_and_prunes(tmp_path):
    layout = IndexLayout(tmp_path / "idx")
    seen = []
    with layout:
        for k in range(4):
            stage = layout.staging(f"v{k}")
            (stage / "manifest.json").write_text(str(k))
            layout.publish(stage, f"v{k}")
            seen.append((tmp_path / "idx" / "manifest.json").read_text())
    assert seen == ["0", "1", "2", "3"]
    assert os.readlink(tmp_path / "idx") == os.path.join(".idx.versions", "v3")
    assert sorted(p.name for p in layout.versions.iterdir()) == ["v2", "v3"]


def test_plain_folder_is_migrated(tmp_path):
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "manifest.json").write_text("old")
    layout = IndexLayout(tmp_path / "idx")
    with layout:
        stage = layout.staging("v1")
        (stage / "manifest.json").write_text("new")
        layout.publish(stage, "v1")
    assert (tmp_path / "idx").is_symlink()
    assert (tmp_path / "idx" / "manifest.json").read_text() == "new"
    assert len([p for p in layout.versions.iterdir() if p.name.startswith("legacy-")]) == 1
