"""MAP (SPEC section 5) and localisation accuracy against definitions and hand examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.training.metrics import (
    attention_peak,
    average_precisions,
    crop_point_to_original,
    localisation_accuracy,
    mean_average_precision,
    peak_in_box,
    scores_average_precisions,
)


def brute_force_map(q_emb, q_attr, q_val, c_emb, c_attr, c_val):
    """Straight from the text: per attribute, rank by inner product (ties: candidate order),
    AP = mean precision at the relevant ranks (0 without relevant), weighted overall mean."""
    per_attr, counts = {}, {}
    for a in sorted(set(q_attr)):
        aps = []
        cands = [j for j in range(len(c_attr)) if c_attr[j] == a]
        for i in range(len(q_attr)):
            if q_attr[i] != a:
                continue
            score = {j: sum(x * y for x, y in zip(q_emb[i], c_emb[j], strict=True)) for j in cands}
            ranking = sorted(cands, key=lambda j: -score[j])  # Python's sort is stable
            hits, precisions = 0, []
            for rank, j in enumerate(ranking, start=1):
                if c_val[j] == q_val[i]:
                    hits += 1
                    precisions.append(hits / rank)
            aps.append(sum(precisions) / len(precisions) if precisions else 0.0)
        per_attr[str(a)] = 100.0 * sum(aps) / len(aps)
        counts[str(a)] = len(aps)
    overall = sum(per_attr[k] * counts[k] for k in per_attr) / sum(counts.values())
    return overall, per_attr, counts


def _random_case(seed: int, n_attrs: int = 4, dim: int = 3):
    """Small-integer embeddings: scores are exact, and ties are frequent."""
    rng = np.random.default_rng(seed)
    q_counts = rng.integers(1, 12, size=n_attrs)
    c_counts = rng.integers(0, 30, size=n_attrs)
    c_counts[0] = max(c_counts[0], 5)
    n_values = rng.integers(2, 6, size=n_attrs)
    q_attr = np.repeat(np.arange(n_attrs), q_counts)
    c_attr = np.repeat(np.arange(n_attrs), c_counts)
    rng.shuffle(q_attr)
    rng.shuffle(c_attr)
    # value n_values[a] for queries only: such queries have no relevant candidate
    q_val = np.array([rng.integers(0, n_values[a] + 1) for a in q_attr])
    c_val = np.array([rng.integers(0, n_values[a]) for a in c_attr])
    q_emb = rng.integers(-1, 2, size=(q_attr.size, dim)).astype(np.float32)
    c_emb = rng.integers(-1, 2, size=(c_attr.size, dim)).astype(np.float32)
    return q_emb, q_attr, q_val, c_emb, c_attr, c_val


def test_hand_example_rel_non_rel():
    # candidate scores 3 > 2 > 1; relevance [rel, non, rel] -> AP = (1 + 2/3) / 2
    res = mean_average_precision(
        np.array([[1.0]]), [0], [7], np.array([[3.0], [2.0], [1.0]]), [0, 0, 0], [7, 1, 7]
    )
    assert res.overall == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert res.per_attribute == {"0": pytest.approx(100 * 5 / 6)}
    assert res.query_counts == {"0": 1} and res.candidate_counts == {"0": 3}


def test_ties_follow_candidate_order():
    q = np.array([[1.0]])
    c = np.array([[1.0], [1.0], [1.0]])
    # all tied: ranking is candidate order [non, rel, non] -> AP = 1/2
    assert mean_average_precision(q, [0], [1], c, [0, 0, 0], [0, 1, 0]).overall == 50.0
    # [rel, non, non] -> AP = 1
    assert mean_average_precision(q, [0], [1], c, [0, 0, 0], [1, 0, 0]).overall == 100.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signed_zero_scores_tie(dtype):
    q = np.array([[1.0]], dtype=dtype)
    for c in ([[-0.0], [0.0]], [[0.0], [-0.0]]):
        res = mean_average_precision(q, [0], [1], np.array(c, dtype=dtype), [0, 0], [0, 1])
        assert res.overall == 50.0


@pytest.mark.parametrize("seed", range(4))
def test_float32_and_float64_rank_alike(seed):
    # float32 scores use a packed-key sort, float64 a stable argsort: same tie rule
    q_emb, q_attr, q_val, c_emb, c_attr, c_val = _random_case(seed, dim=2)
    a = mean_average_precision(q_emb, q_attr, q_val, c_emb, c_attr, c_val)
    b = mean_average_precision(q_emb.astype(np.float64), q_attr, q_val,
                               c_emb.astype(np.float64), c_attr, c_val)
    np.testing.assert_array_equal(a.query_ap, b.query_ap)


def test_rejects_non_finite_embeddings():
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.array([[np.nan]]), [0], [0], np.ones((1, 1)), [0], [0])


def test_no_relevant_candidate_counts_as_zero():
    q = np.array([[1.0], [1.0]])
    c = np.array([[1.0], [0.5]])
    res = mean_average_precision(q, [0, 0], [5, 0], c, [0, 0], [0, 1])
    # query 0 has no relevant candidate (AP 0), query 1 finds its match first (AP 1)
    np.testing.assert_allclose(res.query_ap, [0.0, 1.0])
    assert res.overall == 50.0 and res.query_counts == {"0": 2}


def test_attribute_without_candidates():
    q = np.array([[1.0], [1.0]])
    res = mean_average_precision(q, [0, 1], [0, 0], np.array([[1.0]]), [0], [0],
                                 attr_names=["a", "b"])
    assert res.per_attribute == {"a": 100.0, "b": 0.0}
    assert res.candidate_counts == {"a": 1, "b": 0}


def test_overall_weighted_by_query_counts():
    q = np.ones((4, 1))
    c = np.ones((1, 1))
    # attribute "x": 1 query, AP 1; attribute "y": 3 queries, AP 0
    res = mean_average_precision(q, [0, 1, 1, 1], [0, 0, 0, 0], np.vstack([c, c]), [0, 1],
                                 [0, 9], attr_names=["x", "y"])
    assert res.per_attribute == {"x": 100.0, "y": 0.0}
    assert res.overall == 25.0  # not the unweighted 50
    assert res.to_dict()["counts"] == {"queries": {"x": 1, "y": 3},
                                       "candidates": {"x": 1, "y": 1}}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_matches_brute_force(seed, chunk_size):
    case = _random_case(seed)
    res = mean_average_precision(*case, chunk_size=chunk_size)
    overall, per_attr, counts = brute_force_map(*(x.tolist() for x in case))
    assert res.overall == pytest.approx(overall, abs=1e-9)
    assert res.per_attribute == pytest.approx(per_attr, abs=1e-9)
    assert res.query_counts == counts


def test_matches_brute_force_real_valued():
    rng = np.random.default_rng(123)
    q_emb = rng.standard_normal((40, 16)).astype(np.float32)
    c_emb = rng.standard_normal((120, 16)).astype(np.float32)
    q_attr, c_attr = rng.integers(0, 3, 40), rng.integers(0, 3, 120)
    q_val, c_val = rng.integers(0, 4, 40), rng.integers(0, 4, 120)
    res = mean_average_precision(q_emb, q_attr, q_val, c_emb, c_attr, c_val)
    # the brute force recomputes scores in float64: same ranking for real-valued data
    overall, per_attr, _ = brute_force_map(
        q_emb.astype(np.float64).tolist(), q_attr.tolist(), q_val.tolist(),
        c_emb.astype(np.float64).tolist(), c_attr.tolist(), c_val.tolist(),
    )
    assert res.overall == pytest.approx(overall, abs=1e-9)
    assert res.per_attribute == pytest.approx(per_attr, abs=1e-9)


def test_per_attribute_embedding_tensor():
    q_emb, q_attr, q_val, c_emb, c_attr, c_val = _random_case(3)
    rng = np.random.default_rng(0)
    n_attrs = 4
    q_all = rng.standard_normal((q_attr.size, n_attrs, q_emb.shape[1])).astype(np.float32)
    c_all = rng.standard_normal((c_attr.size, n_attrs, c_emb.shape[1])).astype(np.float32)
    q_all[np.arange(q_attr.size), q_attr] = q_emb
    c_all[np.arange(c_attr.size), c_attr] = c_emb
    a = mean_average_precision(q_all, q_attr, q_val, c_all, c_attr, c_val)
    b = mean_average_precision(q_emb, q_attr, q_val, c_emb, c_attr, c_val)
    assert a.overall == b.overall and a.per_attribute == b.per_attribute


def test_average_precisions_rows():
    rel = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=bool)
    np.testing.assert_allclose(
        average_precisions(rel), [(1 + 2 / 3) / 2, 0.0, (1 / 2 + 2 / 3) / 2, 1.0]
    )


def test_scores_average_precisions():
    scores = np.array([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    ap = scores_average_precisions(scores, np.array([7, 1]), np.array([7, 1, 7]))
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, 1 / 2])  # row 2: ties, rel at rank 2
    assert scores_average_precisions(np.zeros((2, 0)), np.zeros(2), np.zeros(0)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="do not match"):
        scores_average_precisions(scores, np.array([7]), np.array([7, 1, 7]))


def test_input_validation():
    with pytest.raises(ValueError, match="no queries"):
        mean_average_precision(np.zeros((0, 2)), [], [], np.zeros((1, 2)), [0], [0])
    with pytest.raises(ValueError, match="must be equal"):
        mean_average_precision(np.zeros((2, 2)), [0], [0, 0], np.zeros((1, 2)), [0], [0])
    with pytest.raises(ValueError, match="embedding sizes"):
        mean_average_precision(np.zeros((1, 2)), [0], [0], np.zeros((1, 3)), [0], [0])
    with pytest.raises(ValueError, match="no name"):
        mean_average_precision(np.zeros((1, 2)), [1], [0], np.zeros((1, 2)), [1], [0],
                               attr_names=["only"])


# ------------------------------------------------------------------ localisation


def test_attention_peak_cell_centre():
    att = np.zeros((2, 4))
    att[1, 2] = 1.0
    assert attention_peak(att) == (2.5 / 4, 1.5 / 2)
    assert attention_peak(np.ones((2, 2))) == (0.25, 0.25)  # tie: first cell


def test_crop_mapping_landscape_and_portrait():
    # 400x200: the crop is the centred 200x200 square x in [100, 300], y in [0, 200]
    assert crop_point_to_original(0.0, 0.0, (400, 200)) == (100.0, 0.0)
    assert crop_point_to_original(0.75, 0.25, (400, 200)) == (250.0, 50.0)
    # 200x400: y in [100, 300]
    assert crop_point_to_original(0.25, 0.75, (200, 400)) == (50.0, 250.0)
    assert crop_point_to_original(1.0, 1.0, (300, 300)) == (300.0, 300.0)
    # an explicit crop region wins
    assert crop_point_to_original(0.5, 0.25, (400, 200), (100, 0, 300, 200)) == (200.0, 50.0)
    assert crop_point_to_original(0.5, 0.5, (400, 200), (0, 0, 40, 20)) == (20.0, 10.0)


@pytest.mark.parametrize("size", [(400, 200), (200, 400), (333, 500), (640, 427), (97, 97)])
def test_default_crop_matches_model_geometry(size):
    roi = pytest.importorskip("model.roi")
    geom = roi.CropGeometry(size[0], size[1], 224)
    for u, v in [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0), (0.3, 0.8)]:
        exact = crop_point_to_original(u, v, size, geom.crop_box())
        approx = crop_point_to_original(u, v, size)
        assert exact == pytest.approx(approx, abs=2.0)  # resize rounding


def test_peak_in_box_and_accuracy():
    top_right = np.array([[0.1, 0.6], [0.2, 0.1]])  # peak cell (0, 1) -> (0.75, 0.25)
    bottom_left = np.array([[0.1, 0.1], [0.7, 0.1]])  # peak cell (1, 0) -> (0.25, 0.75)
    assert peak_in_box(top_right, (400, 200), (240, 40, 260, 60))  # peak at (250, 50)
    assert not peak_in_box(top_right, (400, 200), (0, 0, 200, 200))
    assert peak_in_box(bottom_left, (200, 400), (50, 250, 60, 260))  # border included
    acc = localisation_accuracy(
        [top_right, bottom_left, bottom_left],
        [(400, 200), (200, 400), (400, 200)],
        [(240, 40, 260, 60), (0, 0, 10, 10), (100, 100, 200, 200)],  # hit, miss, hit (150,150)
    )
    assert math.isclose(acc, 200 / 3)
    # with the crop region given explicitly (here: the left half of the 400x200 image)
    assert localisation_accuracy([top_right], [(400, 200)], [(140, 40, 160, 60)],
                                 crop_boxes=[(0, 0, 200, 200)]) == 100.0
    with pytest.raises(ValueError):
        localisation_accuracy([], [], [])
