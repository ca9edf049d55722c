"""ADDE's manipulation protocol: queries, NDCG and top-k on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexer.filters import DEFAULT_MIN_CONFIDENCE
from model.manipulation import (
    agreement_of,
    agreement_scores,
    manipulate,
    same_item,
    score,
)
from model.prototypes import compute_prototypes
from model.tagging import Calibration, Tagger
from model.training.manipulation_eval import (
    OLD_DEFAULT,
    AgreementRun,
    Queries,
    agreement_method_scores,
    evaluate_manipulation,
    kept_queries,
    make_queries,
    make_runs,
    method_scores,
    ndcg,
    query_metrics,
    top_k,
)


def test_ndcg_is_addes_normalised_by_k_results_of_relevance_one():
    got = ndcg(np.array([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    idcg = 1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4)
    assert got[0] == pytest.approx((1 / math.log(2) + (math.sqrt(2) - 1) / math.log(4)) / idcg)
    assert got[1] == pytest.approx(1.0) and got[2] == 0.0


def test_queries_are_every_other_value_with_an_image_that_has_all_target_labels():
    labels = np.array([[0, 0], [1, 0], [0, 1], [1, -1]])   # the last one is not fully labelled
    q = make_queries(labels, [2, 3])
    got = sorted(zip(q.ref.tolist(), q.attr.tolist(), q.value.tolist(), strict=True))
    # ref 0 (0,0): attr0 -> (1,0) exists, attr1 -> (0,1) exists, (0,2) does not
    # ref 1 (1,0): (0,0) exists, (1,1) and (1,2) do not; ref 2 (0,1): (1,1) no, (0,0) yes
    assert got == [(0, 0, 1), (0, 1, 1), (1, 0, 0), (2, 1, 0)]
    assert q.target[q.ref == 1].tolist() == [[0, 0]]


def test_top_k_and_metrics_by_hand():
    scores = np.array([[0.1, 0.9, 0.5, -np.inf], [0.3, 0.3, -np.inf, -np.inf]])
    assert top_k(scores, 3).tolist() == [[1, 2, 0], [0, 1, -1]]   # ties by row, -inf empty
    labels = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    q = Queries(np.array([0, 0]), np.array([0, 1]), np.array([1, 1]),
                np.array([[1, 0], [0, 1]]))
    m = query_metrics(np.array([[2, 1, -1], [0, 2, 1]]), labels, q, ks=(1, 3))
    # query 0 wants (1, 0): item 2 (1,1) target 1 / others 0, item 1 a hit, then an empty rank
    assert m["hit@1"].tolist() == [0.0, 0.0] and m["hit@3"].tolist() == [1.0, 0.0]
    disc = 1 / np.log(np.arange(3) + 2)
    assert m["ndcg@3/target"][0] == pytest.approx((disc[0] + disc[1]) / disc.sum())
    assert m["ndcg@3/others"][0] == pytest.approx(disc[1] / disc.sum())
    assert m["ndcg@3/all"][0] == pytest.approx(
        ((2 ** 0.5 - 1) * disc[0] + disc[1]) / disc.sum())
    # query 1 wants (0, 1) on attribute 1: item 0 (0,0) others 1, item 2 (1,1) target 1
    assert m["ndcg@3/target"][1] == pytest.approx(disc[1] / disc.sum())


def _clustered(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 2, n), rng.integers(0, 3, n)], axis=1)
    centres = [rng.normal(size=(2, 8)), rng.normal(size=(3, 8))]
    emb = np.stack([centres[a][labels[:, a]] + 0.2 * rng.normal(size=(n, 8))
                    for a in range(2)], axis=1)
    return (emb / np.linalg.norm(emb, axis=2, keepdims=True)).astype(np.float32), labels


def test_prototype_composition_finds_the_target_and_matches_the_library():
    emb, labels = _clustered()
    attrs = ["a", "b"]
    protos = compute_prototypes({a: emb[:, i] for i, a in enumerate(attrs)},
                                {a: labels[:, i] for i, a in enumerate(attrs)}, "train")
    rep = evaluate_manipulation(emb, labels, [2, 3], protos, attrs, target_weights=(2.0,))
    assert list(rep["methods"]) == ["image", "tag-filter", "prototype mix=0.5 w=2",
                                    "prototype mix=1 w=4"]   # the old default beside the new
    image = rep["methods"]["image"]["overall"]
    for name in ("prototype mix=0.5 w=2", "prototype mix=1 w=4"):
        proto = rep["methods"][name]["overall"]
        assert proto["ndcg@10/target"] > 0.95 and image["ndcg@10/target"] < 0.6
        assert proto["hit@10"] > image["hit@10"]
    assert rep["methods"]["tag-filter"]["overall"]["ndcg@10/target"] > 0.95
    # the evaluation's vectorised scores are model.manipulation's, query by query
    q = make_queries(labels, [2, 3])
    refs = np.unique(q.ref)
    cos = np.full((2, 3, len(emb)), -np.inf)
    for i, a in enumerate(attrs):
        cos[i, protos[a].indices()] = protos[a].matrix() @ emb[:, i].T
    tags = np.zeros((len(emb), 2), int)
    for mix in (0.5, 1.0):
        kept = kept_queries(emb[refs], protos, attrs, mix)
        got = method_scores("prototype", emb, refs, q, cos, tags, 2.0, kept=kept)
        for j in (0, len(q) // 2, len(q) - 1):
            mq = manipulate({a: emb[q.ref[j], i] for i, a in enumerate(attrs)}, protos,
                            {attrs[q.attr[j]]: int(q.value[j])}, target_weight=2.0,
                            keep_mix=mix)
            want = score(mq, {a: emb[:, i] for i, a in enumerate(attrs)})
            np.testing.assert_allclose(got[j], want, atol=1e-5)
    # without kept vectors the references' own embeddings are used: keep_mix 1
    own = method_scores("prototype", emb, refs, q, cos, tags, 2.0)
    np.testing.assert_allclose(own, method_scores(
        "prototype", emb, refs, q, cos, tags, 2.0, kept=kept_queries(emb[refs], protos, attrs,
                                                                      1.0)), atol=1e-6)


def test_runs_sweep_the_weights_at_the_keep_mix_and_keep_the_old_default_once():
    names = [r.name for r in make_runs([1.0, 2.75], 0.5, prob=True)]
    assert names == ["image", "tag-filter", "prototype mix=0.5 w=1", "prototype mix=0.5 w=2.75",
                     "prototype mix=1 w=4", "prototype-prob mix=0.5 w=1",
                     "prototype-prob mix=0.5 w=2.75", "prototype-prob mix=1 w=4",
                     "agreement mix=0.5 b=2.5 w=8"]
    old = make_runs([2.0, OLD_DEFAULT[1]], OLD_DEFAULT[0], prob=False)
    assert [r.name for r in old] == ["image", "tag-filter", "prototype mix=1 w=2",
                                     "prototype mix=1 w=4"]
    emb, labels = _clustered()
    protos = compute_prototypes({"a": emb[:, 0], "b": emb[:, 1]},
                                {"a": labels[:, 0], "b": labels[:, 1]}, "train")
    with pytest.raises(ValueError, match="keep_mix"):
        evaluate_manipulation(emb, labels, [2, 3], protos, ["a", "b"], keep_mix=0.0)


def test_agreement_rows_candidates_need_the_services_default_confidence():
    assert AgreementRun().min_confidence == DEFAULT_MIN_CONFIDENCE


def test_agreement_row_is_the_librarys_two_stages_query_by_query():
    """Every item tagged with the target value when the pool holds the gallery:
    model.manipulation.agreement_scores; with a pool of 5, only the union of each attribute's
    top 5 (by its query vector) among those items, the service's candidates."""
    emb, labels = _clustered()
    attrs = ["a", "b"]
    protos = compute_prototypes({a: emb[:, i] for i, a in enumerate(attrs)},
                                {a: labels[:, i] for i, a in enumerate(attrs)}, "train")
    cal = Calibration({"a": 0.1, "b": 0.2}, "test")
    tagger = Tagger(protos, cal)
    q = make_queries(labels, [2, 3])
    refs = np.unique(q.ref)
    cos = np.full((2, 3, len(emb)), -np.inf)
    prob = np.zeros((2, 3, len(emb)))
    for i, a in enumerate(attrs):
        cos[i, protos[a].indices()] = tagger.cosines(a, emb[:, i]).T
        prob[i, protos[a].indices()] = tagger.probabilities(a, emb[:, i]).T
    kept = kept_queries(emb[refs], protos, attrs, 0.5)
    run = AgreementRun(agreement=1.5, target_weight=6.0, pool=len(emb))
    got = agreement_method_scores(emb, refs, q, kept, cos, prob, run)
    items = {a: emb[:, i] for i, a in enumerate(attrs)}
    for j in (0, len(q) // 2, len(q) - 1):
        own = {a: emb[q.ref[j], i] for i, a in enumerate(attrs)}
        mq = manipulate(own, protos, {attrs[q.attr[j]]: int(q.value[j])}, keep_mix=0.5)
        want = agreement_scores(mq, agreement_of(mq, own, tagger, 1.5, 6.0), items, tagger)
        weight = 1 + 1.5 + 6.0                    # the library's scores are normalised
        assert got[j][q.ref[j]] == -np.inf        # the reference itself is left out
        want[same_item({attrs[1 - q.attr[j]]: own[attrs[1 - q.attr[j]]]}, items)] = -np.inf
        target = attrs[q.attr[j]]
        column = list(protos[target].indices()).index(int(q.value[j]))
        tagged = tagger.probabilities(target, items[target])[:, column] >= 0.5
        want[~tagged] = -np.inf                   # only the items tagged with the target
        np.testing.assert_allclose(got[j] / weight, want, atol=1e-5)
        pool: set[int] = set()       # each attribute's top 5 among the target-tagged items
        for a in attrs:
            term = np.where(tagged, items[a] @ mq.vectors[a], -np.inf)
            pool |= {int(i) for i in np.argsort(-term, kind="stable")[:5] if tagged[i]}
        few = agreement_method_scores(emb, refs, q, kept, cos, prob,
                                      AgreementRun(1.5, 6.0, pool=5))[j]
        pool = {i for i in pool if np.isfinite(want[i])}     # without the reference's own
        assert 0 < len(pool) < tagged.sum()
        assert set(np.flatnonzero(np.isfinite(few))) == pool
        np.testing.assert_allclose(few[sorted(pool)], got[j][sorted(pool)])
    rep = evaluate_manipulation(emb, labels, [2, 3], protos, attrs, (2.0,), cal)
    assert rep["methods"]["agreement mix=0.5 b=2.5 w=8"]["overall"]["ndcg@10/target"] > 0.95


def test_without_reference_no_method_ranks_the_reference():
    emb, labels = _clustered()
    attrs = ["a", "b"]
    protos = compute_prototypes({a: emb[:, i] for i, a in enumerate(attrs)},
                                {a: labels[:, i] for i, a in enumerate(attrs)}, "train")
    cal = Calibration({"a": 0.1, "b": 0.2}, "test")
    with_ref = evaluate_manipulation(emb, labels, [2, 3], protos, attrs, (2.0,), cal)
    without = evaluate_manipulation(emb, labels, [2, 3], protos, attrs, (2.0,), cal,
                                    without_reference=True)
    # image-only ranks the reference first (others relevance 1), so leaving it out costs it
    assert without["methods"]["image"]["overall"]["ndcg@10/others"] < \
        with_ref["methods"]["image"]["overall"]["ndcg@10/others"]
    agreement = "agreement mix=0.5 b=2.5 w=8"     # already leaves the reference out
    assert without["methods"][agreement]["overall"] == pytest.approx(
        with_ref["methods"][agreement]["overall"])
