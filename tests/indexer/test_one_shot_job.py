"""The batch indexer end to end (issue 4): build, bad files, resume, update, swaps."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from indexer.build import faiss_index as fx
from indexer.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from indexer.layout import IndexLayout, IndexLockedError
from indexer.reader import CatalogIndex
from model import AttributeSpec, build_model, load_model, save_checkpoint
from model.imageio import open_image
from model.training.synth import generate

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--no-progress", "--workers", "1", "--batch-size", "8", "--checkpoint-every", "8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A synthetic catalog (28 images) and a random tiny checkpoint for its attributes."""
    root = tmp_path_factory.mktemp("indexer")
    data = root / "data"
    generate(data, seed=3, n_train=20, n_valid=4, n_test=4, size=64, workers=1)
    attrs = [AttributeSpec(a["name"], a["n_values"])
             for a in json.loads((data / "attributes.json").read_text())]
    torch_seed = __import__("torch").manual_seed(0)
    del torch_seed
    ckpt = root / "tiny.pt"
    save_checkpoint(build_model("tiny", attrs), ckpt)
    return {"data": data, "ckpt": ckpt, "emb": load_model(ckpt, device="cpu")}


@pytest.fixture
def catalog(base, tmp_path) -> Path:
    """A private copy of the synthetic dataset; returns its catalog.csv."""
    data = tmp_path / "data"
    shutil.copytree(base["data"], data)
    return data / "catalog.csv"


def run(catalog: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["--catalog", str(catalog), "--checkpoint", str(ckpt), "--out", str(out),
                 *FAST, *extra])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def reference(emb, paths: list[str]) -> np.ndarray:
    """[N, A, D] embeddings straight from the embedder."""
    return emb.embed_all([open_image(p) for p in paths])


def all_vectors(idx: CatalogIndex, attribute: str) -> tuple[np.ndarray, np.ndarray]:
    return fx.extract(idx._index(attribute))


# -- end to end ------------------------------------------------------------------------------
def test_build_end_to_end_top1_and_brute_force(base, catalog, tmp_path):
    out = tmp_path / "idx"
    assert run(catalog, base["ckpt"], out) == EXIT_OK
    assert out.is_symlink()
    emb = base["emb"]
    with CatalogIndex.open(out) as idx:
        m = idx.manifest
        assert m.format_version == 1 and m.catalog.items == 28 and m.rejected == 0
        assert m.model.sha256 == emb.checkpoint_sha256 and m.model.dim == emb.dim
        assert idx.attributes == emb.attribute_names
        assert all(a.index.type == "flat" and a.index.ntotal == 28 for a in m.attributes)
        rows = read_csv(catalog)
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
            assert [r[0][0].id for r in res] == [r["id"] for r in rows]
            # results equal brute-force inner product
            brute = q @ ref[:, a].T
            for i, hits in enumerate(res):
                order = np.argsort(-brute[i], kind="stable")[:5]
                np.testing.assert_allclose([s for _, s in hits], brute[i][order], atol=1e-5)
                assert {h.row for h, _ in hits[:1]} == {int(order[0])}
        # filters, stored embeddings, combined search
        hits = idx.search(idx.attributes[0], ref[:1, 0], 28, filters={"split": "valid"})[0]
        assert len(hits) == 4 and all(h.metadata["split"] == "valid" for h, _ in hits)
        np.testing.assert_allclose(idx.embedding(rows[0]["id"], idx.attributes[1]), ref[0, 1],
                                   atol=1e-5)
        many = idx.search_many({idx.attributes[0]: 1.0, idx.attributes[1]: 0.5},
                               {idx.attributes[0]: ref[0, 0], idx.attributes[1]: ref[0, 1]}, 3)
        assert many[0][0].id == rows[0]["id"]
        assert many[0][1] == pytest.approx(1.5, abs=1e-4)
    rejected = (out / "rejected.csv").read_text().splitlines()
    assert rejected == ["path,id,reason"]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_types(base, catalog, tmp_path, kind):
    out = tmp_path / "idx"
    small_pq = ["--pq-m", "8", "--pq-nbits", "4"] if kind == "ivfpq" else []
    assert run(catalog, base["ckpt"], out, "--index-type", kind, *small_pq) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        info = idx.manifest.attributes[0].index
        assert info.type == kind and info.params and info.ntotal == 28
        name = idx.attributes[0]
        rows = read_csv(catalog)
        q = base["emb"].embed([open_image(catalog.parent / r["image"]) for r in rows],
                              [name] * 28)
        res = idx.search(name, q, 3)
        assert all(len(r) == 3 for r in res)
        if kind == "hnsw":
            assert [r[0][0].id for r in res] == [r["id"] for r in rows]
        assert idx.embedding(rows[0]["id"], name) is not None


def test_index_types_against_exact_search():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 64))
    x = (centers[rng.integers(0, 50, 4000)] + 0.3 * rng.normal(size=(4000, 64))).astype("f4")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q, base_vecs = x[:100], x[100:]
    ids = np.arange(len(base_vecs), dtype=np.int64) * 2 + 7      # arbitrary row ids
    truth = ids[np.argsort(-(q @ base_vecs.T), axis=1)[:, :10]]
    for kind, min_recall in (("flat", 1.0), ("hnsw", 0.9), ("ivfpq", 0.6)):
        spec = fx.resolve_spec(kind, len(base_vecs), 64, {"m": 32, "nbits": 8})
        index = fx.build(spec, 64, ids, base_vecs.__getitem__)
        _, got = index.search(q, 10)
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)])
        assert recall >= min_recall, (kind, recall)
    assert fx.resolve_spec("auto", 1000, 2048).type == "flat"
    assert fx.resolve_spec("auto", fx.AUTO_HNSW_FROM, 2048).type == "hnsw"
    assert fx.resolve_spec("auto", fx.AUTO_IVFPQ_FROM, 2048).type == "ivfpq"
    big = fx.resolve_spec("ivfpq", 10**6, 2048).params
    assert big["m"] == 256 and big["nlist"] == 1000 and big["nbits"] == 8


# -- bad input ---------------------------------------------------------------------------------
def _bad_catalog(catalog: Path) -> tuple[Path, dict[str, str]]:
    """Append one broken item of every kind; returns the catalog and id -> expected reason."""
    d = catalog.parent / "bad"
    d.mkdir()
    good = catalog.parent / read_csv(catalog)[0]["image"]
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n" * 20)
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (2000, 1500), (200, 10, 10)).save(d / "bomb.png")   # over --max-pixels
    (d / "folder.jpg").mkdir()
    bad = {"bad-missing": ("bad/nope.jpg", "missing"), "bad-empty": ("bad/empty.jpg", "empty"),
           "bad-text": ("bad/text.jpg", "not_an_image"),
           "bad-trunc": ("bad/truncated.jpg", "truncated"),
           "bad-bomb": ("bad/bomb.png", "too_large"),
           "bad-dir": ("bad/folder.jpg", "unreadable")}
    rows = read_csv(catalog)
    template = dict.fromkeys(rows[0], "")
    rows += [{**template, "id": i, "image": p} for i, (p, _) in bad.items()]
    write_csv(catalog, rows)
    return catalog, {i: r for i, (_, r) in bad.items()}


def test_bad_files_are_rejected_with_reasons(base, catalog, tmp_path, capsys):
    catalog, expected = _bad_catalog(catalog)
    out = tmp_path / "idx"
    assert run(catalog, base["ckpt"], out, "--max-pixels", "1000000") == EXIT_OK
    summary = capsys.readouterr().out
    assert "indexed 28 items" in summary and "rejected 6" in summary
    got = {r["id"]: r["reason"] for r in read_csv(out / "rejected.csv")}
    assert got == expected
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.rejected == 6 and idx.size(idx.attributes[0]) == 28
        assert idx.get("bad-text") is None
    # too many failures: non-zero exit, and the published index stays as it was
    before = os.readlink(out)
    assert run(catalog, base["ckpt"], out, "--max-pixels", "1000000",
               "--max-reject-rate", "10%") == EXIT_REJECTS
    assert os.readlink(out) == before


def test_duplicate_ids_fail_before_any_work(base, catalog, tmp_path, capsys):
    rows = read_csv(catalog)
    write_csv(catalog, rows + [rows[3]])
    out = tmp_path / "idx"
    assert run(catalog, base["ckpt"], out) == EXIT_USAGE
    assert "duplicate ids" in capsys.readouterr().err and rows[3]["id"] in str(rows[3])
    assert not out.exists() and not (tmp_path / ".idx.work").exists()


def test_folder_and_jsonl_catalogs(base, catalog, tmp_path):
    out = tmp_path / "folder_idx"
    assert run(catalog.parent / "images", base["ckpt"], out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.get("train/000000.jpg") is not None and len(idx) == 28
    jsonl = catalog.parent / "catalog.jsonl"
    with open(jsonl, "w") as f:
        for i, r in enumerate(read_csv(catalog)):
            f.write(json.dumps({"id": i, "image": r["image"], "price": i * 1.5}) + "\n")
    out = tmp_path / "jsonl_idx"
    assert run(jsonl, base["ckpt"], out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.get("5").metadata == {"price": 7.5}
        q = idx.embedding("5", idx.attributes[0])
        assert [h.id for h, _ in idx.search(idx.attributes[0], q, 3, {"price": "7.5"})[0]] == ["5"]


# -- resume, update ----------------------------------------------------------------------------
def test_kill_and_resume(base, catalog, tmp_path):
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "indexer", "--catalog", str(catalog), "--checkpoint",
           str(base["ckpt"]), "--out", str(out), *FAST]
    env = {**os.environ, "ASEN_INDEXER_CRASH_AFTER_SHARDS": "2", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not out.exists()                                   # nothing half-published
    parts = list((tmp_path / ".idx.work").glob("*/part-*.parquet"))
    assert len(parts) == 2
    assert run(catalog, base["ckpt"], out) == EXIT_OK       # same arguments: resumes
    with CatalogIndex.open(out) as idx:
        b = idx.manifest.build
        assert b["computed"] == 28 - 16 and b["cached"] == 16
        assert len(idx) == 28
        rows = read_csv(catalog)
        ref = reference(base["emb"], [str(catalog.parent / r["image"]) for r in rows])
        ids, vecs = all_vectors(idx, idx.attributes[2])
        np.testing.assert_allclose(vecs[np.argsort(ids)], ref[:, 2], atol=1e-5)
    assert not (tmp_path / ".idx.work").exists()             # cleaned after publishing


def test_update_adds_changes_and_removes(base, catalog, tmp_path):
    out = tmp_path / "idx"
    assert run(catalog, base["ckpt"], out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        old_rows = {r["id"]: idx.get(r["id"]).row for r in read_csv(catalog)}
        old_version = idx.version
    rows = read_csv(catalog)
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
    write_csv(catalog, rows)
    assert run(catalog, base["ckpt"], out, "--update") == EXIT_OK
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
        ref = reference(base["emb"], [str(catalog.parent / r["image"]) for r in rows])
        for a, name in enumerate(idx.attributes):
            for i, r in enumerate(rows):
                np.testing.assert_allclose(idx.embedding(r["id"], name), ref[i, a], atol=1e-5)
            res = idx.search(name, ref[:, a], 1)
            assert [h[0][0].id for h in res] == [r["id"] for r in rows]
    # nothing changed: an update embeds nothing
    assert run(catalog, base["ckpt"], out, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.build["computed"] == 0
        assert idx.manifest.extra["update"]["unchanged"] == 29


def test_update_hnsw_rebuilds_and_keeps_rows(base, catalog, tmp_path):
    out = tmp_path / "idx"
    assert run(catalog, base["ckpt"], out, "--index-type", "hnsw") == EXIT_OK
    rows = read_csv(catalog)
    write_csv(catalog, rows[3:])
    assert run(catalog, base["ckpt"], out, "--update") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        assert idx.manifest.index_type == "hnsw"
        assert idx.size(idx.attributes[0]) == 25 and idx.get(rows[3]["id"]).row == 3


# -- safe writes -------------------------------------------------------------------------------
def test_atomic_replacement_under_concurrent_readers(base, catalog, tmp_path):
    out = tmp_path / "idx"
    rows = read_csv(catalog)
    small = catalog.parent / "small.csv"
    write_csv(small, rows[:10])
    assert run(small, base["ckpt"], out) == EXIT_OK
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
            assert run(cat, base["ckpt"], out) == EXIT_OK
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert seen == {10, 28}
    versions = [p for p in (tmp_path / ".idx.versions").iterdir() if not p.name.startswith(".")]
    assert len(versions) == 2                                  # current + previous
    assert out.resolve() in [v.resolve() for v in versions]


def test_one_writer_at_a_time(tmp_path):
    a, b = IndexLayout(tmp_path / "idx"), IndexLayout(tmp_path / "idx")
    with a, pytest.raises(IndexLockedError):
        b.lock()
    b.lock()
    b.unlock()


def test_reader_rejects_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        CatalogIndex.open(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError):
        CatalogIndex.open(tmp_path / "bad")
    assert faiss.get_num_gpus() >= 0
