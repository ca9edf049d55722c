"""`python -m indexer build` (indexer/build/stage.py) from a store another tool wrote:
results equal brute force, indexes sized to a memory budget that re-rank exactly, search-time
parameters, and updates that keep an index's trained parameters."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from testkit import build_index, read_rows

from indexer import published as published_mod
from indexer.cli import EXIT_OK, EXIT_USAGE
from indexer.reader import CatalogIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(2, n // 60), dim))
    return _unit(centers[rng.integers(0, len(centers), n)] + 0.35 * rng.normal(size=(n, dim)))


def write_foreign_store(folder: Path, ids: list[str], vecs: dict[str, np.ndarray],
                        parts: int = 2) -> None:
    """Parquet as another tool would write it: list<float32> and fixed_size_list<float16>."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(ids), parts + 1).astype(int)
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        cols = {"id": pa.array(ids[lo:hi]),
                "sha256": pa.array([hashlib.sha256(i.encode()).hexdigest() for i in ids[lo:hi]])}
        for j, (name, v) in enumerate(vecs.items()):
            if j % 2 == 0:
                cols[name] = pa.array(list(v[lo:hi]), pa.list_(pa.float32()))
            else:
                flat = pa.array(v[lo:hi].astype(np.float16).ravel(), pa.float16())
                cols[name] = pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
        pq.write_table(pa.table(cols), folder / f"vectors_{k}.parquet")


def write_catalog(path: Path, ids: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "shop"])
        w.writerows([i, f"img/{i}.jpg", "a" if k % 3 else "b"] for k, i in enumerate(ids))
    return path


def brute_top(q: np.ndarray, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_build_from_a_foreign_store_equals_brute_force(tmp_path):
    n, dim = 600, 32
    ids = [f"sku-{k:04d}" for k in range(n)]
    vecs = {"collar": clustered(n, dim, 1), "sleeve": clustered(n, dim, 2)}
    emb_dir = tmp_path / "emb"
    write_foreign_store(emb_dir, ids, vecs)
    catalog = write_catalog(tmp_path / "catalog.csv", [*ids, "no-vector"])
    out = tmp_path / "idx"
    assert build_index(emb_dir, catalog, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.attributes == ["collar", "sleeve"] and idx.dim == dim
        assert idx.manifest.catalog.items == n and idx.manifest.model.sha256 is None
        for name, v in vecs.items():
            v32 = v.astype(np.float16).astype(np.float32) if name == "sleeve" else v
            q = v32[::37]
            order, scores = brute_top(q, v32, 10)
            res = idx.search(name, q, 10)
            for i, hits in enumerate(res):
                assert [h.item.id for h in hits] == [ids[j] for j in order[i]]
                np.testing.assert_allclose([h.score for h in hits], scores[i], atol=1e-5)
    assert read_rows(out / "rejected.csv") == [
        {"path": str(tmp_path / "img" / "no-vector.jpg"), "id": "no-vector",
         "reason": "no_embedding"}]
    # a store id without a catalog row: an error before any work
    short = write_catalog(tmp_path / "short.csv", ids[:-1])
    assert build_index(emb_dir, short, tmp_path / "idx2") == EXIT_USAGE
    assert not (tmp_path / "idx2").exists() and not (tmp_path / ".idx2.versions").exists()


def test_max_memory_picks_a_compressed_index_that_reranks_exactly(tmp_path, monkeypatch):
    n, dim = 3000, 64
    ids = [f"i{k}" for k in range(n)]
    vecs = {"collar": clustered(n, dim, 3)}
    emb_dir = tmp_path / "emb"
    write_foreign_store(emb_dir, ids, vecs, parts=3)
    catalog = write_catalog(tmp_path / "catalog.csv", ids)
    out = tmp_path / "idx"
    flat_needs = n * (dim * 4 + 40)
    assert build_index(emb_dir, catalog, out, "--max-memory", f"{flat_needs // 2}") == EXIT_OK
    v = vecs["collar"]
    with CatalogIndex.open(out) as idx:
        info = idx.manifest.attributes[0].index
        assert info.type == "ivfpq_refine" and "Refine(SQfp16)" in info.factory
        assert info.memory_bytes <= flat_needs // 2 and info.selection["max_memory"]
        # the re-rank is exact on the stored float16 vectors: the brute-force truth
        v16 = v.astype(np.float16).astype(np.float32)
        q = v[::97]
        order, scores = brute_top(q, v16, 10)
        res = idx.search("collar", q, 10)
        for i, hits in enumerate(res):
            assert [h.item.id for h in hits] == [ids[j] for j in order[i]]
            np.testing.assert_allclose([h.score for h in hits], scores[i], atol=1e-4)
            exact = q[i] @ v[[int(h.item.id[1:]) for h in hits]].T
            np.testing.assert_allclose([h.score for h in hits], exact, atol=2e-3)
        # filtered search through FAISS's selector path (not the small-set exact scan)
        monkeypatch.setattr(published_mod, "BRUTE_FORCE_MAX", 0)
        allowed = np.array([k for k in range(n) if k % 3 == 0])
        o2, _ = brute_top(q, v16[allowed], 10)
        res = idx.search("collar", q, 10, filters={"shop": "b"})
        for i, hits in enumerate(res):
            assert [h.item.id for h in hits] == [ids[allowed[j]] for j in o2[i]]
        np.testing.assert_allclose(idx.embedding("i5", "collar"), v[5], atol=2e-3)
    # an update keeps the type and its trained quantizers (re-add), with new rows
    more = [f"i{k}" for k in range(n, n + 200)]
    extra = clustered(200, dim, 4)
    pq.write_table(pa.table({"id": pa.array(more), "sha256": pa.array(["x"] * 200),
                             "collar": pa.array(list(extra), pa.list_(pa.float32()))}),
                   emb_dir / "vectors_9.parquet")
    catalog = write_catalog(tmp_path / "catalog.csv", ids + more)
    assert build_index(emb_dir, catalog, out, "--update", "--max-memory",
                 f"{flat_needs // 2}") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.index_type == "ivfpq_refine" and idx.size("collar") == n + 200
        assert idx.manifest.extra["update"]["added"] == 200
        assert idx.search("collar", extra[:1], 1)[0][0].item.id == more[0]


def test_search_time_knobs_change_the_rerank_depth_in_place(tmp_path):
    n, dim = 3000, 64
    ids = [f"i{k}" for k in range(n)]
    v = clustered(n, dim, 5)
    write_foreign_store(tmp_path / "emb", ids, {"collar": v}, parts=1)
    catalog = write_catalog(tmp_path / "catalog.csv", ids)
    out = tmp_path / "idx"
    # --target-recall 0: the formula's default knobs, not tuned ones (test_build_tuning.py)
    assert build_index(tmp_path / "emb", catalog, out, "--max-memory",
                 f"{n * (dim * 4 + 40) // 2}", "--target-recall", "0") == EXIT_OK
    q = v[::53]
    order, _ = brute_top(q, v.astype(np.float16).astype(np.float32), 10)
    truth = [[ids[j] for j in row] for row in order]

    def top_ids(idx: CatalogIndex) -> list[list[str]]:
        return [[h.item.id for h in hits] for hits in idx.search("collar", q, 10)]

    with CatalogIndex.open(out) as idx:
        built = idx.manifest.attributes[0].index.params
        assert top_ids(idx) == truth
        idx.set_search_params("collar", k_factor=1)    # no re-rank beyond the codes' top 10
        assert top_ids(idx) != truth
        idx.set_search_params("collar", k_factor=built["k_factor"], nprobe=built["nprobe"])
        assert top_ids(idx) == truth
        with pytest.raises(ValueError, match="no search parameter efSearch"):
            idx.set_search_params("collar", efSearch=64)
        with pytest.raises(KeyError, match="unknown attribute"):
            idx.set_search_params("sleeve", k_factor=5)
        assert idx.manifest.attributes[0].index.params == built


def test_update_of_ivfpq_on_a_grown_catalog_keeps_its_parameters(tmp_path):
    n, dim = 2000, 32
    ids = [f"i{k}" for k in range(n + 400)]
    v = clustered(n + 400, dim, 5)
    emb_dir = tmp_path / "emb"
    write_foreign_store(emb_dir, ids[:n], {"collar": v[:n]}, parts=1)
    out = tmp_path / "idx"
    assert build_index(emb_dir, write_catalog(tmp_path / "c.csv", ids[:n]), out, "--index-type",
                 "ivfpq", "--pq-m", "8") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        before = idx.manifest.attributes[0].index.params
    pq.write_table(pa.table({"id": pa.array(ids[n:]), "sha256": pa.array(["y"] * 400),
                             "collar": pa.array(list(v[n:]), pa.list_(pa.float32()))}),
                   emb_dir / "vectors_1.parquet")
    catalog = write_catalog(tmp_path / "c.csv", ids)
    assert build_index(emb_dir, catalog, out, "--update", "--index-type", "ivfpq") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.attributes[0].index.params == before
        assert idx.size("collar") == n + 400
    # build parameters of a type without stored vectors cannot change in an update
    assert build_index(emb_dir, catalog, out, "--update", "--nlist", "7") == EXIT_USAGE
