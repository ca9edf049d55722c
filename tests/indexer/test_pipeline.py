"""The one-shot job, `python -m indexer` (indexer/pipeline.py): the index it builds, bad
files, killing and resuming it, updates, and the published version swapped under readers."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image
from testkit import append_broken_items, index_catalog, read_rows, run_indexer_killed, write_rows

from indexer.build import faiss_index as fx
from indexer.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE
from indexer.reader import CatalogIndex
from model.imageio import open_image


def reference(emb, paths: list[str]) -> np.ndarray:
    """[N, A, D] embeddings straight from the embedder."""
    return emb.embed_all([open_image(p) for p in paths])


def all_vectors(idx: CatalogIndex, attribute: str) -> tuple[np.ndarray, np.ndarray]:
    return fx.extract(idx.published.faiss_index(attribute))


# -- end to end ------------------------------------------------------------------------------
def test_build_end_to_end_top1_and_brute_force(dataset, catalog, tmp_path):
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out) == EXIT_OK
    assert out.is_symlink()
    emb = dataset.embedder
    with CatalogIndex.open(out) as idx:
        m = idx.manifest
        assert m.format_version == 1 and m.catalog.items == 28 and m.rejected == 0
        assert m.model.sha256 == emb.checkpoint_sha256 and m.model.dim == emb.dim
        assert idx.attributes == emb.attribute_names
        assert all(a.index.type == "flat" and a.index.ntotal == 28 for a in m.attributes)
        rows = read_rows(catalog)
        paths = [str(catalog.parent / r["image"]) for r in rows]
        ref = reference(emb, paths)
        items = [idx.get(r["id"]) for r in rows]
        assert [it.row for it in items] == list(range(28))
        assert items[0].metadata["category"] == rows[0]["category"]
        assert items[0].image == os.path.abspath(paths[0])
        for a, name in enumerate(idx.attributes):
            ids, vecs = all_vectors(idx, name)
            np.testing.assert_allclose(vecs[np.argsort(ids)], ref[:, a], atol=1e-5)
            # every item is its own top-1, for every attribute
            q = emb.embed([open_image(p) for p in paths], [name] * len(paths))
            res = idx.search(name, q, 5)
            assert [r[0].item.id for r in res] == [r["id"] for r in rows]
            # results equal brute-force inner product
            brute = q @ ref[:, a].T
            for i, hits in enumerate(res):
                order = np.argsort(-brute[i], kind="stable")[:5]
                np.testing.assert_allclose([h.score for h in hits], brute[i][order], atol=1e-5)
                assert {h.item.row for h in hits[:1]} == {int(order[0])}
        # filters, stored embeddings, combined search
        hits = idx.search(idx.attributes[0], ref[:1, 0], 28, filters={"split": "valid"})[0]
        assert len(hits) == 4 and all(h.item.metadata["split"] == "valid" for h in hits)
        np.testing.assert_allclose(idx.embedding(rows[0]["id"], idx.attributes[1]), ref[0, 1],
                                   atol=1e-5)
        many = idx.search_many({idx.attributes[0]: 1.0, idx.attributes[1]: 0.5},
                               {idx.attributes[0]: ref[0, 0], idx.attributes[1]: ref[0, 1]}, 3)
        assert many[0].item.id == rows[0]["id"]
        assert many[0].score == pytest.approx(1.5, abs=1e-4)
    rejected = (out / "rejected.csv").read_text().splitlines()
    assert rejected == ["path,id,reason"]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_types(dataset, catalog, tmp_path, kind):
    out = tmp_path / "idx"
    small_pq = ["--pq-m", "8", "--pq-nbits", "4"] if kind == "ivfpq" else []
    assert index_catalog(catalog, dataset.checkpoint, out, "--index-type", kind,
                         *small_pq) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        info = idx.manifest.attributes[0].index
        assert info.type == kind and info.params and info.ntotal == 28
        name = idx.attributes[0]
        rows = read_rows(catalog)
        q = dataset.embedder.embed([open_image(catalog.parent / r["image"]) for r in rows],
                              [name] * 28)
        res = idx.search(name, q, 3)
        assert all(len(r) == 3 for r in res)
        if kind == "hnsw":
            assert [r[0].item.id for r in res] == [r["id"] for r in rows]
        assert idx.embedding(rows[0]["id"], name) is not None


# -- bad input ---------------------------------------------------------------------------------
def test_bad_files_are_rejected_with_reasons(dataset, catalog, tmp_path, capsys):
    expected = append_broken_items(catalog)
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out, "--max-pixels", "1000000") == EXIT_OK
    summary = capsys.readouterr().out
    assert "indexed 28 items" in summary and "rejected 6" in summary
    got = {r["id"]: r["reason"] for r in read_rows(out / "rejected.csv")}
    assert got == expected
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.rejected == 6 and idx.size(idx.attributes[0]) == 28
        assert idx.get("bad-text") is None
    # too many failures: non-zero exit, and the published index stays as it was
    before = os.readlink(out)
    assert index_catalog(catalog, dataset.checkpoint, out, "--max-pixels", "1000000",
                         "--max-reject-rate", "10%") == EXIT_REJECTS
    assert os.readlink(out) == before


def test_duplicate_ids_fail_before_any_work(dataset, catalog, tmp_path, capsys):
    rows = read_rows(catalog)
    write_rows(catalog, rows + [rows[3]])
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out) == EXIT_USAGE
    assert "duplicate ids" in capsys.readouterr().err and rows[3]["id"] in str(rows[3])
    assert not out.exists() and not (tmp_path / ".idx.work").exists()


def test_folder_and_jsonl_catalogs(dataset, catalog, tmp_path):
    out = tmp_path / "folder_idx"
    assert index_catalog(catalog.parent / "images", dataset.checkpoint, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.get("train/000000.jpg") is not None and len(idx) == 28
    jsonl = catalog.parent / "catalog.jsonl"
    with open(jsonl, "w") as f:
        for i, r in enumerate(read_rows(catalog)):
            f.write(json.dumps({"id": i, "image": r["image"], "price": i * 1.5}) + "\n")
    out = tmp_path / "jsonl_idx"
    assert index_catalog(jsonl, dataset.checkpoint, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.get("5").metadata == {"price": 7.5}
        q = idx.embedding("5", idx.attributes[0])
        hits = idx.search(idx.attributes[0], q, 3, {"price": "7.5"})[0]
        assert [h.item.id for h in hits] == ["5"]


# -- resume, update ----------------------------------------------------------------------------
def test_kill_and_resume(dataset, catalog, tmp_path):
    out = tmp_path / "idx"
    killed = run_indexer_killed("--catalog", str(catalog), "--checkpoint",
                                str(dataset.checkpoint), "--out", str(out))
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not out.exists()                                   # nothing half-published
    parts = list((tmp_path / ".idx.work").glob("*/part-*.parquet"))
    assert len(parts) == 2
    assert index_catalog(catalog, dataset.checkpoint, out) == EXIT_OK  # same arguments: resumes
    with CatalogIndex.open(out) as idx:
        b = idx.manifest.build
        assert b["computed"] == 28 - 16 and b["cached"] == 16
        assert len(idx) == 28
        rows = read_rows(catalog)
        ref = reference(dataset.embedder, [str(catalog.parent / r["image"]) for r in rows])
        ids, vecs = all_vectors(idx, idx.attributes[2])
        np.testing.assert_allclose(vecs[np.argsort(ids)], ref[:, 2], atol=1e-5)
    assert not (tmp_path / ".idx.work").exists()             # cleaned after publishing


def test_update_adds_changes_and_removes(dataset, catalog, tmp_path):
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        old_rows = {r["id"]: idx.get(r["id"]).row for r in read_rows(catalog)}
        old_version = idx.version
    rows = read_rows(catalog)
    removed = [rows[1]["id"], rows[5]["id"]]
    changed = [rows[2]["id"], rows[7]["id"]]
    for r in rows:
        if r["id"] in changed:                         # new content under the same path
            p = catalog.parent / r["image"]
            Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p, quality=90)
    new_dir = catalog.parent / "new"
    new_dir.mkdir()
    added = []
    for k in range(3):
        arr = np.random.default_rng(k).integers(0, 255, (72, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(new_dir / f"{k}.png")
        added.append({**rows[0], "id": f"new-{k}", "image": f"new/{k}.png"})
    rows = [r for r in rows if r["id"] not in removed] + added
    rows[0] = {**rows[0], "category": "relabelled"}    # metadata-only change
    write_rows(catalog, rows)
    assert index_catalog(catalog, dataset.checkpoint, out, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        m = idx.manifest.extra
        assert m["update"] == {"base_version": old_version, "added": 3, "changed": 2,
                               "removed": 2, "unchanged": 24}
        assert m["build"]["computed"] == 5 and m["build"]["unchanged"] == 24
        assert len(idx) == 29 and idx.size(idx.attributes[0]) == 29
        for rid in removed:
            assert idx.get(rid) is None
        for r in rows:                              # unchanged and changed keep their rows
            if r["id"] in old_rows:
                assert idx.get(r["id"]).row == old_rows[r["id"]]
        assert {idx.get(a["id"]).row for a in added} == {28, 29, 30}
        assert idx.get(rows[0]["id"]).metadata["category"] == "relabelled"
        ref = reference(dataset.embedder, [str(catalog.parent / r["image"]) for r in rows])
        for a, name in enumerate(idx.attributes):
            for i, r in enumerate(rows):
                np.testing.assert_allclose(idx.embedding(r["id"], name), ref[i, a], atol=1e-5)
            res = idx.search(name, ref[:, a], 1)
            assert [h[0].item.id for h in res] == [r["id"] for r in rows]
    # nothing changed: an update embeds nothing
    assert index_catalog(catalog, dataset.checkpoint, out, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.build["computed"] == 0
        assert idx.manifest.extra["update"]["unchanged"] == 29


def test_update_hnsw_rebuilds_and_keeps_rows(dataset, catalog, tmp_path):
    out = tmp_path / "idx"
    assert index_catalog(catalog, dataset.checkpoint, out, "--index-type", "hnsw") == EXIT_OK
    rows = read_rows(catalog)
    write_rows(catalog, rows[3:])
    assert index_catalog(catalog, dataset.checkpoint, out, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.index_type == "hnsw"
        assert idx.size(idx.attributes[0]) == 25 and idx.get(rows[3]["id"]).row == 3


# -- safe writes -------------------------------------------------------------------------------
def test_atomic_replacement_under_concurrent_readers(dataset, catalog, tmp_path):
    out = tmp_path / "idx"
    rows = read_rows(catalog)
    small = catalog.parent / "small.csv"
    write_rows(small, rows[:10])
    assert index_catalog(small, dataset.checkpoint, out) == EXIT_OK
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                with CatalogIndex.open(out) as idx:
                    n = len(idx)
                    assert n in (10, 28) and idx.manifest.catalog.items == n
                    name = idx.attributes[0]
                    assert idx.size(name) == n
                    q = idx.embedding(idx.items_by_row([0])[0].id, name)
                    assert len(idx.search(name, q, 50)[0]) == n
                    seen.add(n)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for cat in (catalog, small, catalog):
            assert index_catalog(cat, dataset.checkpoint, out) == EXIT_OK
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert seen == {10, 28}
    versions = [p for p in (tmp_path / ".idx.versions").iterdir() if not p.name.startswith(".")]
    assert len(versions) == 2                                  # current + previous
    assert out.resolve() in [v.resolve() for v in versions]


