"""`python -m indexer embed` (indexer/embed/stage.py): the Parquet store it writes and a
build from it, what a re-run embeds, resuming a killed run, and the job key."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from testkit import build_index, embed_catalog, read_rows, run_indexer_killed, write_rows

from indexer.cli import EXIT_OK
from indexer.embed.stage import job_key
from indexer.reader import CatalogIndex
from model.imageio import open_image


def test_embed_store_format_then_build(dataset, catalog, tmp_path):
    emb_dir, out = tmp_path / "emb", tmp_path / "idx"
    rows = read_rows(catalog)
    shutil.copy(catalog, catalog.parent / "good.csv")
    with open(catalog, "a") as f:
        f.write("broken,bad.jpg,test,x" + "," * (len(rows[0]) - 4) + "\n")
    (catalog.parent / "bad.jpg").write_text("not an image")
    assert embed_catalog(catalog, dataset.checkpoint, emb_dir) == EXIT_OK
    table = pq.read_table(sorted(emb_dir.glob("*.parquet")))
    names = dataset.embedder.attribute_names
    assert table.column_names == ["id", "sha256", *names]
    assert pa.types.is_fixed_size_list(table.schema.field(names[0]).type)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    img = catalog.parent / rows[3]["image"]
    assert table.column("sha256")[3].as_py() == hashlib.sha256(img.read_bytes()).hexdigest()
    ref = dataset.embedder.embed_all([open_image(catalog.parent / r["image"]) for r in rows])
    vecs = np.stack(table.column(names[1]).to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vecs, ref[:, 1], atol=1e-5)
    assert read_rows(emb_dir / "rejected.csv") == [
        {"path": str(catalog.parent / "bad.jpg"), "id": "broken", "reason": "not_an_image"}]

    assert build_index(emb_dir, catalog, out) == EXIT_OK
    with CatalogIndex.open(out) as idx:
        m = idx.manifest
        assert m.catalog.items == 28 and m.rejected == 1 and m.model.sha256
        assert m.model.sha256 == dataset.embedder.checkpoint_sha256
        assert [a.n_values for a in m.attributes] == [
            a.n_values for a in dataset.embedder.attributes]
        res = idx.search(names[0], ref[:, 0], 1)
        assert [r[0].item.id for r in res] == [r["id"] for r in rows]
    assert read_rows(out / "rejected.csv")[0]["reason"] == "not_an_image"

    # a re-run with an unchanged catalog embeds nothing; a dropped row leaves the store
    assert embed_catalog(catalog.parent / "good.csv", dataset.checkpoint, emb_dir) == EXIT_OK
    meta = json.loads((emb_dir / "store.json").read_text())["last_run"]
    assert meta["computed"] == 0 and meta["cached"] == 28
    write = write_rows(catalog.parent / "fewer.csv", rows[2:])
    assert embed_catalog(write, dataset.checkpoint, emb_dir) == EXIT_OK
    kept = pq.read_table(sorted(emb_dir.glob("*.parquet"))).column("id").to_pylist()
    assert sorted(kept) == sorted(r["id"] for r in rows[2:])


def test_killed_embed_resumes(dataset, catalog, tmp_path):
    emb_dir = tmp_path / "emb"
    killed = run_indexer_killed("embed", "--catalog", str(catalog), "--checkpoint",
                                str(dataset.checkpoint), "--out", str(emb_dir))
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert len(list(emb_dir.glob("part-*.parquet"))) == 2
    assert embed_catalog(catalog, dataset.checkpoint, emb_dir) == EXIT_OK  # same command: resumes
    last = json.loads((emb_dir / "store.json").read_text())["last_run"]
    assert last["computed"] == 28 - 16 and last["cached"] == 16
    rows = read_rows(catalog)
    table = pq.read_table(sorted(emb_dir.glob("*.parquet")))
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    got = dict(zip(table.column("id").to_pylist(),
                   table.column(dataset.embedder.attribute_names[2]).to_pylist(), strict=True))
    ref = dataset.embedder.embed_all([open_image(catalog.parent / r["image"]) for r in rows])
    np.testing.assert_allclose(np.array([got[r["id"]] for r in rows]), ref[:, 2], atol=1e-5)


def test_job_key_depends_on_the_device():
    args = ("sha", "fp32", ["a", "b"])
    assert job_key(*args, "cpu") != job_key(*args, "cuda")
    assert job_key(*args, "cpu") == job_key(*args, "cpu")
