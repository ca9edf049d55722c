"""`build --target-recall` (indexer/build/tuning.py): search knobs tuned at build time to a
recall target on the index's own vectors, recorded in the manifest, kept or re-tuned by
`--update`, overridden by `set_search_params`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from testkit import build_index

from indexer.build import faiss_index as fx
from indexer.build import tuning
from indexer.cli import EXIT_OK, EXIT_USAGE
from indexer.embed.store import EmbeddingStore
from indexer.manifest import IndexInfo, TuningInfo
from indexer.reader import CatalogIndex


def diffuse_clusters(n: int, dim: int, seed: int) -> np.ndarray:
    """40 clusters of uneven spread, their noise 2.5x the centres' scale: a vector's
    neighbours lie in many IVF lists, so nlist / 16 lists probed miss some."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    spread = rng.uniform(0.5, 1.5, size=40)
    label = rng.integers(0, 40, n)
    x = centres[label] + 2.5 * spread[label, None] * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def held_out_recall(index, base: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 of `index` for queries that are not in it, against exact inner product."""
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    _, found = index.search(queries, 10)
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def test_tuning_reaches_a_target_that_the_default_nprobe_misses():
    n, dim = 2500, 32
    v = diffuse_clusters(n + 200, dim, 1)
    base, queries = v[:n], v[n:]
    spec = fx.resolve_spec("ivfpq_refine", n, dim)
    index = fx.build(spec, dim, np.arange(n), base.__getitem__)
    default = held_out_recall(index, base, queries)
    assert default < 0.9                     # nprobe nlist / 16 = 16 of 50 lists
    new, info = tuning.tune(index, spec, tuning.stored_vectors(index), 0.95, sample=300)
    assert info.reached and info.recall - 2 * info.stderr >= 0.95 and info.sample == 300
    assert list(info.params) == ["nprobe", "k_factor"]
    assert {k: new.params[k] for k in info.params} == info.params
    assert new.params["nprobe"] > spec.params["nprobe"]          # more lists probed ...
    assert held_out_recall(index, base, queries) >= 0.93         # ... reach it on new queries
    kind = spec.kind                                              # cheaper than probing all
    full = {**spec.params, "nprobe": spec.params["nlist"]}
    assert kind.search_cost(n, dim, new.params) < kind.search_cost(n, dim, full)
    # a target out of reach (PQ codes alone, no re-rank): the best recall, flagged
    pq = fx.resolve_spec("ivfpq", n, dim, {"m": 4, "nbits": 4})
    pq_index = fx.build(pq, dim, np.arange(n), base.__getitem__)
    got, miss = tuning.tune(pq_index, pq, tuning.Vectors(np.arange(n), base.__getitem__), 0.99,
                            sample=200)
    assert not miss.reached and miss.tried >= 2 and got.params["nprobe"] in range(1, 51)


def test_hnsw_tunes_ef_search_and_flat_is_left_alone():
    n, dim = 1500, 32
    v = diffuse_clusters(n, dim, 2)
    spec = fx.resolve_spec("hnsw", n, dim, {"M": 8})
    index = fx.build(spec, dim, np.arange(n), v.__getitem__)
    new, info = tuning.settle(index, spec, tuning.TuneRequest(0.9, sample=200),
                              tuning.stored_vectors(index))
    assert info is not None and info.reached and list(info.params) == ["efSearch"]
    assert 16 <= new.params["efSearch"] <= 4096
    flat = fx.resolve_spec("flat", n, dim)
    flat_index = fx.build(flat, dim, np.arange(n), v.__getitem__)
    assert tuning.settle(flat_index, flat, tuning.TuneRequest(), None) == (flat, None)


def test_exact_top_leaves_each_query_out():
    v = diffuse_clusters(300, 16, 3)
    qpos = np.array([0, 7, 299])
    top = tuning.exact_top(tuning.Vectors(np.arange(300), v.__getitem__), qpos, 5)
    scores = v[qpos] @ v.T
    scores[np.arange(3), qpos] = -np.inf
    expected = np.argsort(-scores, axis=1)[:, :5]
    assert [set(r) for r in top] == [set(r) for r in expected]


def test_the_manifest_records_tuning_and_reads_old_manifests():
    rec = TuningInfo(target=0.95, recall=0.961, stderr=0.004, sample=1000,
                     params={"nprobe": 54, "k_factor": 50}, tried=11, seconds=3.2, n=200_000)
    info = IndexInfo(type="ivfpq_refine", params={"nprobe": 54, "k_factor": 50}, file="a.faiss",
                     ntotal=200_000, tuning=rec)
    doc = json.loads(json.dumps(info.to_dict()))
    assert IndexInfo.from_dict(doc) == info
    del doc["tuning"]                               # a manifest from before tuning
    assert IndexInfo.from_dict(doc).tuning is None


def write_store(root: Path, v: np.ndarray) -> tuple[Path, Path]:
    ids = [f"i{k}" for k in range(len(v))]
    EmbeddingStore(root / "emb").write(ids, ids, v[:, None, :], ["collar"])
    with open(root / "catalog.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "image"], *([i, f"{i}.jpg"] for i in ids)])
    return root / "emb", root / "catalog.csv"


def test_build_tunes_update_keeps_and_flags_override(tmp_path, capsys):
    n, dim = 1500, 32
    v = diffuse_clusters(n, dim, 4)
    emb, catalog = write_store(tmp_path, v)
    out = tmp_path / "idx"
    small = ["--max-memory", str(n * (dim * 4 + 40) // 2), "--tune-sample", "200"]
    assert build_index(emb, catalog, out, *small) == EXIT_OK
    printed = capsys.readouterr().out
    with CatalogIndex.open(out) as idx:
        info = idx.manifest.attributes[0].index
        rec = info.tuning
        assert info.type == "ivfpq_refine" and rec is not None and rec.status == "tuned"
        assert rec.target == 0.95 and rec.sample == 200 and rec.n == n and rec.reached
        assert {k: info.params[k] for k in rec.params} == rec.params
        knobs = ", ".join(f"{k} {x}" for k, x in rec.params.items())
        assert f"search settings collar: {knobs} -> recall@10 {rec.recall:.3f}" in printed
        # set_search_params still overrides the tuned knobs, in this process only
        q = v[:50]
        tuned = [[h.item.id for h in hits] for hits in idx.search("collar", q, 10)]
        idx.set_search_params("collar", nprobe=1, k_factor=1)
        assert [[h.item.id for h in hits] for hits in idx.search("collar", q, 10)] != tuned
        assert idx.manifest.attributes[0].index.params == info.params
    # an update of unchanged vectors keeps the settings and says so
    assert build_index(emb, catalog, out, "--update") == EXIT_OK
    assert "kept, 0 rows changed since tuning" in capsys.readouterr().out
    with CatalogIndex.open(out) as idx:
        kept = idx.manifest.attributes[0].index
        assert kept.params == info.params and kept.tuning.status == "kept"
        assert kept.tuning.recall == rec.recall
    # another target re-tunes; knobs given on the command line are not tuned
    assert build_index(emb, catalog, out, "--update", "--target-recall", "0.99",
                       "--tune-sample", "200") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        again = idx.manifest.attributes[0].index
        assert again.tuning.status == "tuned" and again.tuning.target == 0.99
        assert again.tuning.recall >= rec.recall
    assert build_index(emb, catalog, out, "--update", "--nprobe", "3") == EXIT_OK
    with CatalogIndex.open(out) as idx:
        fixed = idx.manifest.attributes[0].index
        assert fixed.tuning is None and fixed.params["nprobe"] == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:
        build_index(emb, catalog, out, "--target-recall", "1.5")
    assert bad.value.code == EXIT_USAGE and "a recall between 0 and 1" in \
        capsys.readouterr().err
