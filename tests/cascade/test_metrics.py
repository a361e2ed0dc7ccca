"""Each metric against a case small enough to compute by hand (the arithmetic is in comments)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade import metrics


def test_top_k_orders_by_score_then_lower_id():
    scores = np.array([[0.1, 0.5, 0.5, 0.9, 0.2], [0.0, 2.0, 1.0, 2.0, 2.0]])
    # row 0: 0.9 (id 3), then the 0.5 tie in id order (1, 2).
    # row 1: three items tie at 2.0 for two slots; the lower ids (1, 3) win, not an arbitrary pair.
    assert metrics.top_k(scores, 3).tolist() == [[3, 1, 2], [1, 3, 4]]
    assert metrics.top_k(scores, 2).tolist() == [[3, 1], [1, 3]]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=6, max_size=6), min_size=1, max_size=5),
    st.integers(1, 6),
)
def test_top_k_equals_a_full_stable_sort(rows, k):
    scores = np.array(rows, dtype=np.float64)  # small integers: ties everywhere
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert metrics.top_k(scores, k).tolist() == expected.tolist()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=5, max_size=5))
def test_first_relevant_rank_is_the_position_in_the_top_k_order(cells):
    scores = np.array([[float(s) for s, _ in cells]])
    relevant = np.array([[r for _, r in cells]])
    page = metrics.top_k(scores, 5)[0]
    positions = [i + 1 for i, item in enumerate(page) if relevant[0, item]]
    expected = positions[0] if positions else math.inf
    assert metrics.first_relevant_rank(scores, relevant)[0] == expected


def test_first_relevant_rank_counts_ties_ahead_of_it():
    # Item 2 (0.3) is relevant; ahead of it: item 1 (0.9) and item 0 (0.3, lower id) -> rank 3.
    scores = np.array([[0.3, 0.9, 0.3, 0.1], [0.3, 0.9, 0.3, 0.1]])
    relevant = np.array([[False, False, True, False], [False, False, False, False]])
    assert metrics.first_relevant_rank(scores, relevant).tolist() == [3.0, math.inf]


def test_recall_ndcg_hit_rate_of_known_pages():
    hits = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    n_relevant = np.array([3, 2])
    # user 0 @4: DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (3 relevant) = 1 + 1/log2(3) + 1/log2(4)
    #   = 2.130930 -> NDCG 0.703918. @2: DCG = 1, IDCG = 1 + 0.630930 -> 0.613147.
    ndcg4 = 1.5 / (1 + 1 / math.log2(3) + 0.5)
    ndcg2 = 1 / (1 + 1 / math.log2(3))
    np.testing.assert_allclose(metrics.ndcg_at_k(hits, n_relevant, 4), [ndcg4, 0.0])
    np.testing.assert_allclose(metrics.ndcg_at_k(hits, n_relevant, 2), [ndcg2, 0.0])
    assert ndcg4 == pytest.approx(0.703918, abs=1e-6)
    np.testing.assert_allclose(metrics.recall_at_k(hits, n_relevant, 4), [2 / 3, 0.0])
    np.testing.assert_allclose(metrics.recall_at_k(hits, n_relevant, 2), [1 / 3, 0.0])
    np.testing.assert_allclose(metrics.hit_rate_at_k(hits, 1), [1.0, 0.0])


def test_ndcg_of_a_perfect_page_is_one_even_with_more_relevant_than_k():
    hits = np.ones((1, 3), dtype=bool)
    assert metrics.ndcg_at_k(hits, np.array([10]), 3)[0] == pytest.approx(1.0)


def test_reciprocal_rank_with_and_without_cut_off():
    ranks = np.array([1, 3, math.inf])
    np.testing.assert_allclose(metrics.reciprocal_rank(ranks), [1, 1 / 3, 0])
    np.testing.assert_allclose(metrics.reciprocal_rank(ranks, k=2), [1, 0, 0])


def test_auc_counts_ties_as_half():
    # (pos, neg) pairs: (0.8, 0.8) tie 0.5, (0.8, 0.2) 1, (0.4, 0.8) 0, (0.4, 0.2) 1 -> 2.5 / 4.
    assert metrics.auc([1, 0, 1, 0], [0.8, 0.8, 0.4, 0.2]) == pytest.approx(0.625)
    assert metrics.auc([0, 1], [0.1, 0.9]) == 1.0
    with pytest.raises(ValueError, match="single class"):
        metrics.auc([1, 1], [0.1, 0.2])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=30))
def test_auc_matches_pairwise_counting(rows):
    labels = np.array([y for y, _ in rows])
    scores = np.array([s for _, s in rows], dtype=np.float64)
    if labels.all() or not labels.any():
        return
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert metrics.auc(labels, scores) == pytest.approx(wins / (len(pos) * len(neg)))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    # user 7: pos 0.9 beats 0.5, loses to 0.95 -> AUC 0.5 over 3 impressions.
    # user 3: two positives at 0.6 vs negatives 0.6 (half each) and 0.1 (win each) -> 3/4, over 4.
    # user 9: positives only -> skipped. GAUC = (3 * 0.5 + 4 * 0.75) / 7 = 4.5 / 7.
    users = np.array([7, 3, 9, 7, 3, 3, 9, 7, 3])
    labels = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.6, 0.3, 0.5, 0.6, 0.6, 0.2, 0.95, 0.1])
    assert metrics.gauc(users, labels, scores) == pytest.approx(4.5 / 7)
    with pytest.raises(ValueError, match="no user"):
        metrics.gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])


def test_logloss():
    # -(ln 0.8 + ln 0.6) / 2 = (0.223144 + 0.510826) / 2
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(0.366985, abs=1e-6)
    assert metrics.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, finite


def test_coverage_counts_distinct_items_over_the_catalog():
    assert metrics.coverage(np.array([[1, 2], [2, 3]]), n_catalog=10) == pytest.approx(0.3)


def test_novelty_is_mean_self_information():
    item_users = np.array([0, 8, 2, 1, 0])  # of 8 users; item 4 has none -> counts as 1
    # -log2: item 1 = log2(8/8) = 0, item 2 = log2(8/2) = 2, item 3 = 3, item 4 = 3 -> mean 2.
    assert metrics.novelty(np.array([[1, 2], [3, 4]]), item_users, 8) == pytest.approx(2.0)


def test_ild_jaccard_on_category_sets():
    categories = np.array([[0, 0], [1, 2], [2, 3], [4, 0], [0, 0]])  # item 4 has no category
    # items 1-2: {1,2} vs {2,3}: Jaccard 1/3 -> 2/3; 1-3 and 2-3 share nothing -> 1. Mean 8/9.
    np.testing.assert_allclose(
        metrics.ild_jaccard(np.array([[1, 2, 3], [1, 1, 1], [4, 4, 1]]), categories),
        [8 / 9, 0.0, 1.0],
    )


def test_ild_cosine_on_vectors():
    vectors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # 1-2 orthogonal -> 1; 1-3 and 2-3 at 45 degrees -> 1 - 1/sqrt(2) each.
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    np.testing.assert_allclose(metrics.ild_cosine(np.array([[1, 2, 3]]), vectors), [expected])
