"""The live-changes overlay of `CatalogIndex` without HTTP: real FAISS index, real journal
files. Exactness against brute force, both ways of hiding rows, filters on live items, and
the journal positions (folded, dropped, another model's vectors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testkit import image_bytes, random_unit_vectors

import indexer.published as published
from indexer.live.journal import Journal, JournalError, LiveChangesUnavailable
from indexer.live.overlay import LiveStatus
from indexer.published import PublishedIndex
from indexer.reader import CatalogIndex, Hit


def png(seed: int) -> bytes:
    """An 8 x 8 PNG of one colour, by ``seed``."""
    return image_bytes((seed % 256, 7, 9), (8, 8))


def unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    return random_unit_vectors(rng, (dim,))


@pytest.fixture()
def idx(fx, tmp_path):
    """The fixture's (read-only) index with a journal of the test's own."""
    with CatalogIndex.open(fx.index_dir, journal=Journal(tmp_path / "journal")) as index:
        yield index


def brute_force(idx: CatalogIndex, attribute: str, q: np.ndarray, k: int) -> list[str]:
    """Every current item ranked by exact inner product (from the stored vectors)."""
    ids = [it.id for it in idx.list_items(0, 10**6)[1]]
    items, vecs = idx.embeddings(ids, [attribute])
    order = np.argsort(-(vecs[attribute] @ q), kind="stable")[:k]
    return [items[i].id for i in order]


def test_search_equals_brute_force_with_hidden_rows_both_ways(idx, monkeypatch):
    rng = np.random.default_rng(0)
    ids = [it.id for it in idx.list_items(0, 1000)[1]]
    attribute = idx.attributes[0]
    for n, item_id in enumerate(ids[:12]):
        if n % 3:
            assert idx.delete_item(item_id) is not None
        else:    # replaced: its published row is hidden, the live one takes its place
            idx.put_item(item_id, png(n), {"n": n}, {a: unit(rng, idx.dim)
                                                     for a in idx.attributes})
    for n in range(5):
        idx.put_item(f"new-{n}", png(100 + n), {"n": n}, {a: unit(rng, idx.dim)
                                                          for a in idx.attributes})
    assert len(idx) == len(ids) - 8 + 5 == idx.size(attribute)
    q = unit(rng, idx.dim)
    k = len(idx)
    want = brute_force(idx, attribute, q, k)
    deepened = [h.item.id for h in idx.search(attribute, q, k)[0]]
    monkeypatch.setattr(published, "EXCLUDE_DEEPEN_MAX", 0)   # the NOT-selector path
    selected = [h.item.id for h in idx.search(attribute, q, k)[0]]
    assert deepened == want and selected == want
    top = idx.search_many({a: 1.0 for a in idx.attributes[:2]},
                          {a: q for a in idx.attributes[:2]}, 5)
    assert len(top) == 5 and len({h.item.id for h in top}) == 5
    assert not {h.item.id for h in idx.search_many({attribute: 1.0}, {attribute: q}, k)} & {
        ids[n] for n in range(12) if n % 3}


def test_filters_match_live_items_as_they_match_published_ones(idx):
    rng = np.random.default_rng(1)
    vectors = {a: unit(rng, idx.dim) for a in idx.attributes}
    for item_id, meta in (("int", {"n": 3}), ("text", {"n": "3"}), ("real", {"n": 3.5}),
                          ("flag", {"flag": True}), ("none", {})):
        idx.put_item(item_id, png(1), meta, vectors)
    a = idx.attributes[0]

    def found(filters):
        return sorted(h.item.id for h in idx.search(a, vectors[a], 100, filters)[0]
                      if h.item.id in ("int", "text", "real", "flag", "none"))

    assert found({"n": "3"}) == ["int", "text"]      # the published items' SQL semantics
    assert found({"n": ["3.5", "9"]}) == ["real"]
    assert found({"flag": "1"}) == ["flag"]
    assert {"n", "flag"} <= idx.metadata_columns()
    rows = idx.allowed_rows({"n": "3"})
    assert {idx.get("int").row, idx.get("text").row} <= set(rows.tolist())


def test_positions_stale_view_and_foreign_model(idx):
    rng = np.random.default_rng(2)
    vectors = {a: unit(rng, idx.dim) for a in idx.attributes}
    seq, replaced = idx.put_item("p-1", png(2), {}, vectors)
    status = idx.live_status()
    assert isinstance(status, LiveStatus)
    assert replaced is False and status.pending == 1 and status.live_items == 1
    journal = Journal(Path(status.journal).parent)
    con = journal.connect()
    try:
        with Journal.transaction(con):                 # a put embedded by another model
            Journal.append_put(con, "p-2", "x.png", "0" * 64, {}, "another-model",
                               idx.attributes, np.stack([vectors[a] for a in idx.attributes]))
        assert idx.get("p-2") is not None and idx.embedding("p-2", idx.attributes[0]) is None
        assert "p-2" not in [h.item.id for h in idx.search(idx.attributes[0],
                                                            vectors[idx.attributes[0]], 5)[0]]
        assert idx.live.stale is False
        with Journal.transaction(con):                 # not read by idx before it is dropped
            dropped = Journal.append_put(con, "p-3", "y.png", "1" * 64, {}, None,
                                         idx.attributes,
                                         np.stack([vectors[a] for a in idx.attributes]))
            Journal.fold(con, dropped, dropped)        # two folds later: entries dropped
        with Journal.transaction(con):
            Journal.append_delete(con, "p-1")
    finally:
        con.close()
    view = idx.live
    assert view.stale is True                          # it has no way to know what it missed
    assert idx.get("p-1") is None                      # but still applies what is there


def test_search_many_merges_live_items_as_one_ranking(idx):
    """Published and live candidates rank together by the weighted total; each hit carries
    its per-attribute scores."""
    rng = np.random.default_rng(3)
    a, b = idx.attributes[:2]
    q = {a: unit(rng, idx.dim), b: unit(rng, idx.dim)}
    idx.put_item("best", png(3), {}, {n: q.get(n, unit(rng, idx.dim)) for n in idx.attributes})
    hits = idx.search_many({a: 1.0, b: 0.5}, q, 4)
    assert all(isinstance(h, Hit) for h in hits) and hits[0].item.id == "best"
    assert hits[0].score == pytest.approx(1.5, abs=1e-5)
    for h in hits:
        assert h.score == pytest.approx(h.scores[a] + 0.5 * h.scores[b], abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_many_rescore_ranks_published_and_live_candidates_and_drops_minus_inf(idx):
    """A rescore ranks every candidate, live ones included, from their stored vectors of the
    weighted attributes; -inf leaves a candidate out; the hits keep their similarities."""
    rng = np.random.default_rng(4)
    a, b = idx.attributes[:2]
    first = idx.list_items(0, 1)[1][0].id
    q = {a: idx.embedding(first, a), b: unit(rng, idx.dim)}    # a: a published item's own
    idx.put_item("live", png(4), {}, {n: unit(rng, idx.dim) for n in idx.attributes})
    live_b = idx.embedding("live", b)
    best_a = idx.search(a, q[a][None, :], 1)[0][0]
    assert best_a.item.id == first
    seen: list[int] = []

    def rescore(stored):      # nearest the live item on b first; the best on a left out
        assert set(stored) == {a, b}
        seen.append(len(stored[b]))
        out = stored[b] @ live_b
        out[stored[a] @ q[a] >= best_a.score - 1e-5] = -np.inf
        return out

    hits = idx.search_many({a: 1.0, b: 1.0}, q, 5, rescore=rescore)
    assert hits[0].item.id == "live" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert best_a.item.id not in {h.item.id for h in hits}     # the -inf one (published)
    assert len(hits) == 5 and len(seen) == 2                   # published, then live
    for h in hits:
        assert h.score == pytest.approx(float(idx.embedding(h.item.id, b) @ live_b), abs=1e-3)
        assert set(h.scores) == {a, b}


def test_published_index_alone_and_an_index_without_journal(fx):
    """PublishedIndex reads the version as built; CatalogIndex over it without a journal
    serves the same and refuses live changes with LiveChangesUnavailable."""
    with PublishedIndex.open(fx.index_dir) as pub:
        a = pub.attributes[0]
        q = pub.embedding(pub.items.page(0, 1)[0].id, a)
        base = pub.search(a, q, 5)
        total, page = pub.list_items(0, 3, exclude=np.array([0]))
        assert total == len(pub) - 1 and [it.row for it in page] == [1, 2, 3]
        index = CatalogIndex(pub)
        assert index.search(a, q, 5) == base and len(index) == len(pub)
        assert index.live_status() is None and index.image_dirs == []
        with pytest.raises(LiveChangesUnavailable):
            index.put_item("x", png(4), {}, {n: q for n in pub.attributes})
        with pytest.raises(JournalError):           # what a caller of put_item catches
            index.delete_item(base[0][0].item.id)


def test_a_view_that_missed_dropped_changes_is_stale_and_warns_once(idx, caplog):
    """Polling off: the view never read the entries two folds dropped, and the journal holds
    none after its position, yet it records `stale` (status, every read) and logs it once."""
    rng = np.random.default_rng(5)
    vectors = np.stack([unit(rng, idx.dim) for _ in idx.attributes])
    idx.put_item("seen", png(5), {}, {a: vectors[n] for n, a in enumerate(idx.attributes)})
    seen = idx.live.applied
    journal = Journal(Path(idx.live_status().journal).parent)
    con = journal.connect()
    try:
        with Journal.transaction(con):     # a fold, then a fold without changes: all gone
            missed = Journal.append_put(con, "missed", "y.png", "1" * 64, {}, None,
                                        idx.attributes, vectors)
            Journal.fold(con, missed, missed)
    finally:
        con.close()
    with caplog.at_level("WARNING", logger="indexer.live.overlay"):
        views = [idx.live for _ in range(3)]
        status = idx.live_status()
    assert all(v.stale for v in views) and status.stale is True
    assert views[-1].applied == seen and idx.get("seen") is not None
    assert sum("dropped changes" in r.getMessage() for r in caplog.records) == 1
