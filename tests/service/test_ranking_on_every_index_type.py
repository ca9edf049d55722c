"""Re-ranking and grouping on every index type: the stored vectors are read back from
flat, hnsw, ivfpq (its PQ approximation) and ivfpq_refine (float16) indexes alike.

One server (``products_server``); each test points its ASEN_INDEX_DIR symlink at the index
it checks and reloads.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.embed.store import EmbeddingStore

TYPES = ("flat", "hnsw", "ivfpq", "ivfpq_refine")
#: how far an index's stored vectors may be from the embeddings it was built from
STORE_TOLERANCE = {"flat": 1e-6, "hnsw": 1e-6, "ivfpq_refine": 2e-3, "ivfpq": None}


@pytest.fixture(scope="module")
def indexes(products, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("types")
    out = {"flat": products.index_dir}
    for kind in TYPES[1:]:
        out[kind] = products.build(root / kind, "--index-type", kind)
    return out


@pytest.fixture(scope="module")
def server(products_server):
    """The product catalog's shared server (each test serves the index it checks)."""
    return products_server.process


def stored_vectors(folder: Path, attribute: str, ids: list[str]) -> np.ndarray:
    """The vectors an index file holds for `ids`, read here with FAISS directly."""
    folder = Path(os.path.realpath(folder))
    con = sqlite3.connect(folder / "items.sqlite")
    rows = dict(con.execute("SELECT id, row FROM items").fetchall())
    con.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(a for a in manifest["attributes"] if a["name"] == attribute)
    index = faiss.read_index(str(folder / entry["index"]["file"]))
    if entry["index"]["type"] == "ivfpq":
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
    return np.stack([index.reconstruct(int(rows[i])) for i in ids])


@pytest.mark.parametrize("kind", TYPES)
def test_rerank_reads_stored_vectors_of_every_index_type(client, products_server, indexes,
                                                        products, fx, kind):
    products_server.serve(indexes[kind])
    attrs = client.get("/v1/attributes").json()["attributes"]
    assert {a["index_type"] for a in attrs} == {kind}
    ids = fx.item_ids()
    query, candidates = ids[5], ids[::2]
    body = client.post("/v1/rerank", data={
        "item_id": query, "attribute": "colour",
        "candidates": json.dumps([*candidates, "not-an-item"])}).json()
    vecs = stored_vectors(indexes[kind], "colour", [query, *candidates])
    expected = vecs[1:] @ vecs[0]
    order = np.argsort(-expected, kind="stable")
    assert [r["id"] for r in body["results"]] == [candidates[i] for i in order]
    assert [r["score"] for r in body["results"]] == pytest.approx(expected[order], abs=1e-5)
    assert body["unknown"] == ["not-an-item"]
    tolerance = STORE_TOLERANCE[kind]
    if tolerance is not None:   # ivfpq keeps only codes: its vectors are approximations
        exact = EmbeddingStore(products.embeddings).vectors("colour", [query, *candidates])
        assert np.abs(vecs - exact).max() <= tolerance


@pytest.mark.parametrize("kind", TYPES)
def test_grouping_and_compose_on_every_index_type(client, products_server, indexes, kind):
    products_server.serve(indexes[kind])
    body = client.post("/v1/search/by-item", json={
        "item_id": "train-000010", "attribute": "neckline", "k": 6,
        "group_by": "product_id"}).json()
    groups = [r["group"] for r in body["results"]]
    assert len(groups) == 6 and len(set(groups)) == 6
    refs = [{"attribute": "neckline", "weight": 1, "item_id": "train-000010"},
            {"attribute": "colour", "weight": 1, "item_id": "test-000001"}]
    composed = client.post("/v1/search/compose", data={
        "references": json.dumps(refs), "k": "5", "group_by": "product_id"})
    assert composed.status_code == 200, composed.text
    results = composed.json()["results"]
    assert len(results) == 5 and len({r["group"] for r in results}) == 5
    for r in results:
        assert r["score"] == pytest.approx(
            0.5 * r["scores"]["neckline"] + 0.5 * r["scores"]["colour"], abs=1e-5)
