"""The two indexer stages (issue 10): `embed` -> Parquet store -> `build`, bring-your-own
embeddings, resuming a killed `embed`, and indexes sized to a memory budget."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer import reader as reader_mod
from indexer.build import budget
from indexer.cli import EXIT_OK, EXIT_USAGE, main
from indexer.embed.local_engine import EmbedOutcome, available_cpus
from indexer.reader import CatalogIndex
from model import AttributeSpec, build_model, load_model, save_checkpoint
from model.imageio import open_image
from model.training.synth import generate

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--no-progress", "--workers", "1", "--batch-size", "8", "--checkpoint-every", "8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stages")
    data = root / "data"
    generate(data, seed=5, n_train=20, n_valid=4, n_test=4, size=64, workers=1)
    attrs = [AttributeSpec(a["name"], a["n_values"])
             for a in json.loads((data / "attributes.json").read_text())]
    __import__("torch").manual_seed(0)
    ckpt = root / "tiny.pt"
    save_checkpoint(build_model("tiny", attrs), ckpt)
    return {"data": data, "ckpt": ckpt, "emb": load_model(ckpt, device="cpu")}


@pytest.fixture
def catalog(base, tmp_path) -> Path:
    shutil.copytree(base["data"], tmp_path / "data")
    return tmp_path / "data" / "catalog.csv"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def embed(catalog: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--catalog", str(catalog), "--checkpoint", str(ckpt),
                 "--out", str(out), *FAST, *extra])


def build(emb_dir: Path, catalog: Path, out: Path, *extra: str) -> int:
    return main(["build", "--embeddings", str(emb_dir), "--catalog", str(catalog),
                 "--out", str(out), *extra])


# -- embed + build ---------------------------------------------------------------------------
def test_embed_store_format_then_build(base, catalog, tmp_path):
    emb_dir, out = tmp_path / "emb", tmp_path / "idx"
    rows = read_rows(catalog)
    shutil.copy(catalog, catalog.parent / "good.csv")
    with open(catalog, "a") as f:
        f.write("broken,bad.jpg,test,x" + "," * (len(rows[0]) - 4) + "\n")
    (catalog.parent / "bad.jpg").write_text("not an image")
    assert embed(catalog, base["ckpt"], emb_dir) == EXIT_OK
    table = pq.read_table(sorted(emb_dir.glob("*.parquet")))
    names = base["emb"].attribute_names
    assert table.column_names == ["id", "sha256", *names]
    assert pa.types.is_fixed_size_list(table.schema.field(names[0]).type)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    img = catalog.parent / rows[3]["image"]
    assert table.column("sha256")[3].as_py() == hashlib.sha256(img.read_bytes()).hexdigest()
    ref = base["emb"].embed_all([open_image(catalog.parent / r["image"]) for r in rows])
    vecs = np.stack(table.column(names[1]).to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vecs, ref[:, 1], atol=1e-5)
    assert read_rows(emb_dir / "rejected.csv") == [
        {"path": str(catalog.parent / "bad.jpg"), "id": "broken", "reason": "not_an_image"}]

    assert build(emb_dir, catalog, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        m = idx.manifest
        assert m.catalog.items == 28 and m.rejected == 1 and m.model.sha256
        assert m.model.sha256 == base["emb"].checkpoint_sha256
        assert [a.n_values for a in m.attributes] == [a.n_values for a in base["emb"].attributes]
        res = idx.search(names[0], ref[:, 0], 1)
        assert [r[0][0].id for r in res] == [r["id"] for r in rows]
    assert read_rows(out / "rejected.csv")[0]["reason"] == "not_an_image"

    # a re-run with an unchanged catalog embeds nothing; a dropped row leaves the store
    assert embed(catalog.parent / "good.csv", base["ckpt"], emb_dir) == EXIT_OK
    meta = json.loads((emb_dir / "store.json").read_text())["last_run"]
    assert meta["computed"] == 0 and meta["cached"] == 28
    write = catalog.parent / "fewer.csv"
    with open(write, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[2:])
    assert embed(write, base["ckpt"], emb_dir) == EXIT_OK
    kept = pq.read_table(sorted(emb_dir.glob("*.parquet"))).column("id").to_pylist()
    assert sorted(kept) == sorted(r["id"] for r in rows[2:])


def test_killed_embed_resumes(base, catalog, tmp_path):
    emb_dir = tmp_path / "emb"
    cmd = [sys.executable, "-m", "indexer", "embed", "--catalog", str(catalog), "--checkpoint",
           str(base["ckpt"]), "--out", str(emb_dir), *FAST]
    env = {**os.environ, "ASEN_INDEXER_CRASH_AFTER_SHARDS": "2", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert len(list(emb_dir.glob("part-*.parquet"))) == 2
    assert embed(catalog, base["ckpt"], emb_dir) == EXIT_OK          # same command: resumes
    last = json.loads((emb_dir / "store.json").read_text())["last_run"]
    assert last["computed"] == 28 - 16 and last["cached"] == 16
    rows = read_rows(catalog)
    table = pq.read_table(sorted(emb_dir.glob("*.parquet")))
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    got = dict(zip(table.column("id").to_pylist(),
                   table.column(base["emb"].attribute_names[2]).to_pylist(), strict=True))
    ref = base["emb"].embed_all([open_image(catalog.parent / r["image"]) for r in rows])
    np.testing.assert_allclose(np.array([got[r["id"]] for r in rows]), ref[:, 2], atol=1e-5)


# -- bring your own embeddings -----------------------------------------------------------------
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
    assert build(emb_dir, catalog, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.attributes == ["collar", "sleeve"] and idx.dim == dim
        assert idx.manifest.catalog.items == n and idx.manifest.model.sha256 is None
        for name, v in vecs.items():
            v32 = v.astype(np.float16).astype(np.float32) if name == "sleeve" else v
            q = v32[::37]
            order, scores = brute_top(q, v32, 10)
            res = idx.search(name, q, 10)
            for i, hits in enumerate(res):
                assert [h.id for h, _ in hits] == [ids[j] for j in order[i]]
                np.testing.assert_allclose([s for _, s in hits], scores[i], atol=1e-5)
    assert read_rows(out / "rejected.csv") == [
        {"path": str(tmp_path / "img" / "no-vector.jpg"), "id": "no-vector",
         "reason": "no_embedding"}]
    # a store id without a catalog row: an error before any work
    short = write_catalog(tmp_path / "short.csv", ids[:-1])
    assert build(emb_dir, short, tmp_path / "idx2") == EXIT_USAGE
    assert not (tmp_path / "idx2").exists() and not (tmp_path / ".idx2.versions").exists()


# -- memory budget ---------------------------------------------------------------------------
def test_budget_selection_rules():
    assert budget.parse_size("512M") == 512 << 20 and budget.parse_size("4G") == 4 << 30
    assert budget.parse_size("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(ValueError):
        budget.parse_size("lots")
    assert budget.select(1000, 2048, 1 << 30).spec.type == "flat"
    big = budget.select(10**6, 2048, 512 << 20)       # flat would need ~8 GB
    assert big.spec.type == "ivfpq_refine" and big.memory_bytes <= 512 << 20
    assert not big.spec.params["opq"] and big.disk_bytes == 10**6 * 2048 * 2
    assert budget.select(10**6, 2048, 512 << 20, {"opq": True}).spec.params["opq"]
    smaller = budget.select(10**6, 2048, 128 << 20)
    assert smaller.spec.params["m"] * smaller.spec.params["nbits"] < (
        big.spec.params["m"] * big.spec.params["nbits"])
    with pytest.raises(budget.BudgetError, match="smallest needs"):
        budget.select(10**6, 2048, 1 << 20)


def test_max_memory_picks_a_compressed_index_that_reranks_exactly(tmp_path, monkeypatch):
    n, dim = 3000, 64
    ids = [f"i{k}" for k in range(n)]
    vecs = {"collar": clustered(n, dim, 3)}
    emb_dir = tmp_path / "emb"
    write_foreign_store(emb_dir, ids, vecs, parts=3)
    catalog = write_catalog(tmp_path / "catalog.csv", ids)
    out = tmp_path / "idx"
    flat_needs = n * (dim * 4 + 40)
    assert build(emb_dir, catalog, out, "--max-memory", f"{flat_needs // 2}") == EXIT_OK
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
            assert [h.id for h, _ in hits] == [ids[j] for j in order[i]]
            np.testing.assert_allclose([s for _, s in hits], scores[i], atol=1e-4)
            exact = q[i] @ v[[int(h.id[1:]) for h, _ in hits]].T
            np.testing.assert_allclose([s for _, s in hits], exact, atol=2e-3)
        # filtered search through FAISS's selector path (not the small-set exact scan)
        monkeypatch.setattr(reader_mod, "BRUTE_FORCE_MAX", 0)
        allowed = np.array([k for k in range(n) if k % 3 == 0])
        o2, _ = brute_top(q, v16[allowed], 10)
        res = idx.search("collar", q, 10, filters={"shop": "b"})
        for i, hits in enumerate(res):
            assert [h.id for h, _ in hits] == [ids[allowed[j]] for j in o2[i]]
        np.testing.assert_allclose(idx.embedding("i5", "collar"), v[5], atol=2e-3)
    # an update keeps the type and its trained quantizers (re-add), with new rows
    more = [f"i{k}" for k in range(n, n + 200)]
    extra = clustered(200, dim, 4)
    pq.write_table(pa.table({"id": pa.array(more), "sha256": pa.array(["x"] * 200),
                             "collar": pa.array(list(extra), pa.list_(pa.float32()))}),
                   emb_dir / "vectors_9.parquet")
    catalog = write_catalog(tmp_path / "catalog.csv", ids + more)
    assert build(emb_dir, catalog, out, "--update", "--max-memory",
                 f"{flat_needs // 2}") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.index_type == "ivfpq_refine" and idx.size("collar") == n + 200
        assert idx.manifest.extra["update"]["added"] == 200
        assert idx.search("collar", extra[:1], 1)[0][0][0].id == more[0]


def test_search_time_knobs_change_the_rerank_depth_in_place(tmp_path):
    n, dim = 3000, 64
    ids = [f"i{k}" for k in range(n)]
    v = clustered(n, dim, 5)
    write_foreign_store(tmp_path / "emb", ids, {"collar": v}, parts=1)
    catalog = write_catalog(tmp_path / "catalog.csv", ids)
    out = tmp_path / "idx"
    assert build(tmp_path / "emb", catalog, out, "--max-memory",
                 f"{n * (dim * 4 + 40) // 2}") == EXIT_OK
    q = v[::53]
    order, _ = brute_top(q, v.astype(np.float16).astype(np.float32), 10)
    truth = [[ids[j] for j in row] for row in order]

    def top_ids(idx: CatalogIndex) -> list[list[str]]:
        return [[h.id for h, _ in hits] for hits in idx.search("collar", q, 10)]

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
    assert build(emb_dir, write_catalog(tmp_path / "c.csv", ids[:n]), out, "--index-type",
                 "ivfpq", "--pq-m", "8") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        before = idx.manifest.attributes[0].index.params
    pq.write_table(pa.table({"id": pa.array(ids[n:]), "sha256": pa.array(["y"] * 400),
                             "collar": pa.array(list(v[n:]), pa.list_(pa.float32()))}),
                   emb_dir / "vectors_1.parquet")
    catalog = write_catalog(tmp_path / "c.csv", ids)
    assert build(emb_dir, catalog, out, "--update", "--index-type", "ivfpq") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.attributes[0].index.params == before
        assert idx.size("collar") == n + 400
    # build parameters of a type without stored vectors cannot change in an update
    assert build(emb_dir, catalog, out, "--update", "--nlist", "7") == EXIT_USAGE


# -- Ray engine --------------------------------------------------------------------------------
def _store_contents(emb_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    table = pq.read_table(sorted(emb_dir.glob("*.parquet")))
    names = [c for c in table.column_names if c not in ("id", "sha256")]
    vecs = {i: np.stack([np.asarray(table.column(n)[k].as_py(), np.float32) for n in names])
            for k, i in enumerate(table.column("id").to_pylist())}
    rejects = {r["id"]: r["reason"] for r in read_rows(emb_dir / "rejected.csv")}
    return vecs, rejects


def test_steady_rate_leaves_out_the_start_up():
    out = EmbedOutcome(shas=[None] * 10, status=["computed"] * 10, seconds=6.0)
    assert out.steady_images_per_s() is None              # no vectors came back
    out.first_vectors_seconds, out.items_by_first_vectors = 2.0, 4
    assert out.steady_images_per_s() == pytest.approx(6 / 4)
    out.items_by_first_vectors = 10                       # one batch: nothing after it
    assert out.steady_images_per_s() is None


def test_ray_engine_equals_the_local_engine(base, catalog, tmp_path):
    d = catalog.parent / "bad"
    d.mkdir()
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n" * 20)
    from PIL import Image
    Image.new("RGB", (2000, 1500), (200, 10, 10)).save(d / "bomb.png")
    rows = read_rows(catalog)
    bad = {"bad-empty": "bad/empty.jpg", "bad-text": "bad/text.jpg", "bad-bomb": "bad/bomb.png",
           "bad-missing": "bad/nope.jpg"}
    with open(catalog, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writerows({**dict.fromkeys(rows[0], ""), "id": i, "image": p} for i, p in bad.items())
    limits = ["--max-pixels", "1000000"]
    assert embed(catalog, base["ckpt"], tmp_path / "local", *limits) == EXIT_OK
    assert embed(catalog, base["ckpt"], tmp_path / "ray", *limits, "--engine", "ray",
                 "--ray-actors", "1") == EXIT_OK
    local_vecs, local_rej = _store_contents(tmp_path / "local")
    ray_vecs, ray_rej = _store_contents(tmp_path / "ray")
    assert sorted(ray_vecs) == sorted(local_vecs) == sorted(r["id"] for r in rows)
    assert ray_rej == local_rej == {"bad-empty": "empty", "bad-text": "not_an_image",
                                    "bad-bomb": "too_large", "bad-missing": "missing"}
    for i, v in local_vecs.items():
        np.testing.assert_allclose(ray_vecs[i], v, atol=1e-4)
    meta = json.loads((tmp_path / "ray" / "store.json").read_text())
    assert meta["last_run"]["engine"] == "ray" and meta["device"] == "cpu"
    for engine in ("local", "ray"):     # several batches of 8: a start-up and a steady rate
        run = json.loads((tmp_path / engine / "store.json").read_text())["last_run"]
        assert 0 < run["first_vectors_seconds"] < run["seconds"]
        assert run["steady_images_per_s"] > 0
    # the local engine runs the --workers it was given; Ray one decode task per CPU its one
    # actor leaves on this machine
    assert json.loads((tmp_path / "local" / "store.json").read_text())["last_run"]["workers"] == 1
    assert meta["last_run"]["workers"] == max(1, available_cpus() - 1)
    # Ray gives an actor with num_cpus=1 one OpenMP thread; its model must still get the
    # node's CPUs, as the local engine's model does
    assert meta["last_run"]["model_threads"] == [available_cpus()]
