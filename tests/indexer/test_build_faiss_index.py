"""The FAISS helpers (indexer/build/faiss_index.py): recall of each index type against exact
search, the automatic choice, updates and extraction that keep row ids, and IVF training
with a GPU clustering index (pinned on the CPU: a stand-in for the GPU copy)."""

from __future__ import annotations

import weakref

import faiss
import numpy as np
import pytest

from indexer.build import faiss_index as fx


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


def _vectors(n: int = 2000, d: int = 32) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


IVF_PARAMS = {"nlist": 8, "m": 4, "nbits": 4, "nprobe": 8}


def test_clustering_index_outlives_ivf_training(monkeypatch):
    """A CPU flat index stands in for the GPU copy; the IVF keeps only a raw pointer to it,
    so the Python object must stay alive until training is over (the old code freed it at
    once and trained through a dangling pointer)."""
    vecs = _vectors()
    made: list[weakref.ref] = []
    during: list[tuple[bool, int]] = []

    def fake_to_all_gpus(index, *args, **kwargs):
        stand_in = faiss.IndexFlatL2(index.d)
        made.append(weakref.ref(stand_in))
        return stand_in

    original = faiss.IndexIVFPQ.train

    def recording_train(self, x):
        alive = bool(made) and made[-1]() is not None
        if not alive:  # stop before FAISS calls through the dangling pointer
            during.append((False, 0))
            raise RuntimeError("clustering index freed before training")
        original(self, x)
        during.append((True, made[-1]().ntotal))   # the k-means ran on the stand-in

    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_all_gpus)
    monkeypatch.setattr(faiss.IndexIVFPQ, "train", recording_train)
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1], IVF_PARAMS)
    index = fx.build(spec, vecs.shape[1], np.arange(len(vecs)), vecs.__getitem__,
                     use_gpu=True)
    assert during == [(True, IVF_PARAMS["nlist"])]
    assert faiss.extract_index_ivf(index).clustering_index is None   # no pointer left behind
    assert made[-1]() is None                                        # and released after
    assert index.is_trained and index.ntotal == len(vecs)


def test_gpu_failure_during_training_falls_back_to_the_cpu():
    vecs = _vectors()
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1], IVF_PARAMS)
    index = fx.new_index(spec, vecs.shape[1])
    # a clustering index of the wrong dimension makes the k-means itself throw
    where = fx.train_ivf(index, vecs, lambda flat: faiss.IndexFlatL2(flat.d + 1))
    assert where == "cpu" and index.is_trained
    assert faiss.extract_index_ivf(index).clustering_index is None


def test_gpu_copy_failure_falls_back_to_the_cpu():
    vecs = _vectors()
    spec = fx.resolve_spec("ivfpq", len(vecs), vecs.shape[1], IVF_PARAMS)
    index = fx.new_index(spec, vecs.shape[1])

    def no_gpu(flat):
        raise RuntimeError("no GPU")

    assert fx.train_ivf(index, vecs, no_gpu) == "cpu" and index.is_trained
    held = []

    def to_gpu(flat):
        held.append(faiss.IndexFlatL2(flat.d))
        return held[-1]

    other = fx.new_index(spec, vecs.shape[1])
    assert fx.train_ivf(other, vecs, to_gpu) == "gpu" and other.is_trained
