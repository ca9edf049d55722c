"""The embeddings store (indexer/embed/store.py): parts committed, superseded and
compacted, the writer lock, vectors that are not unit-norm refused."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import random_unit_vectors

from indexer.embed.store import EmbeddingStore, StoreError
from indexer.layout import IndexLockedError


def test_embedding_store_commits_supersedes_and_compacts(tmp_path):
    store = EmbeddingStore(tmp_path / "emb")
    v = random_unit_vectors(np.random.default_rng(0), (5, 2, 4))
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
