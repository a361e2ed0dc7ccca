"""Full-ranking evaluation against a hand computation on a toy of a few users."""

import math

import numpy as np
import pytest

from cascade.evaluation import UserItems, evaluate_ranking


def _interactions(pairs):
    users, items = zip(*pairs, strict=True)
    return {"user_id": np.array(users, dtype=np.int64), "item_id": np.array(items, dtype=np.int64)}


def test_user_items_pairs_and_dense_ignore_duplicates_and_unknown_users():
    history = UserItems.from_pairs(np.array([2, 1, 2, 2]), np.array([3, 1, 1, 3]), 3, 4)
    assert history.lengths().tolist() == [0, 1, 2]
    rows, items = history.pairs(np.array([2, 7, 1]))  # 7 is not in the table: no items
    assert list(zip(rows.tolist(), items.tolist(), strict=True)) == [(0, 1), (0, 3), (2, 1)]
    assert history.dense(np.array([1, 0])).tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]
    by_item = history.transpose()
    assert by_item.pairs(np.array([1, 3]))[1].tolist() == [1, 2, 2]


def test_evaluate_ranking_matches_a_hand_computation():
    # Items 1..5; every user gets the same scores, item 1 best: 1 > 2 > 3 > 4 > 5.
    def score_fn(user_ids):
        return np.tile([9.0, 5, 4, 3, 2, 1], (len(user_ids), 1))  # id 0 must never be ranked

    train = _interactions([(1, 1), (2, 2), (3, 5), (5, 1)])
    test = _interactions([(1, 2), (1, 2), (1, 4), (2, 1), (2, 2), (3, 4), (3, 5), (4, 1)])
    # Ranking minus seen, page of 2 (K = 2); relevant = test items minus seen:
    #   user 1: ranking 2,3,4,5 -> page [2, 3]; relevant {2, 4}: recall 1/2,
    #           NDCG = 1 / (1 + 1/log2(3)) = 0.613147, first relevant at rank 1.
    #   user 2: ranking 1,3,4,5 -> page [1, 3]; relevant {1} (2 was seen): recall 1, NDCG 1, rank 1.
    #   user 3: ranking 1,2,3,4 -> page [1, 2]; relevant {4} (5 was seen): no hit, rank 4.
    #   user 4: no training history -> not evaluated. user 5: no test items -> not evaluated.
    categories = np.array([[0], [1], [1], [2], [2], [3]])
    result = evaluate_ranking(
        score_fn, train, test, n_items=6, ks=(2,), item_categories=categories, batch_size=2
    )
    ndcg_user1 = 1 / (1 + 1 / math.log2(3))
    assert result["n_test_users"] == 3
    assert result["Recall@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert result["NDCG@2"] == pytest.approx((ndcg_user1 + 1 + 0) / 3)
    assert result["HitRate@2"] == pytest.approx(2 / 3)
    assert result["MRR"] == pytest.approx((1 + 1 + 1 / 4) / 3)
    # Pages [2,3], [1,3], [1,2] cover items {1,2,3} of 5.
    assert result["Coverage@2"] == pytest.approx(3 / 5)
    # Train users per item (of 4 with history): item 1 -> 2 (p 1/2, 1 bit); item 2 -> 1 and item
    # 3 -> 0, counted as 1 (p 1/4, 2 bits). Pages hold 2,3 | 1,3 | 1,2 -> (2+2+1+2+1+2) / 6 bits.
    assert result["Novelty@2"] == pytest.approx(10 / 6)
    # Categories: 1 and 2 share category 1 (diversity 0); pages with item 3 (category 2) -> 1.
    assert result["ILD@2"] == pytest.approx(2 / 3)


def test_seen_items_never_appear_in_pages_even_when_scored_highest():
    n_items = 5

    def score_fn(user_ids):  # loves exactly what the user already played
        return history.dense(user_ids, dtype=np.float64) * 100 + np.arange(n_items)[::-1]

    train = _interactions([(1, 1), (1, 2), (2, 3)])
    history = UserItems.from_table(train, 3, n_items)
    test = _interactions([(1, 3), (2, 4)])
    result = evaluate_ranking(score_fn, train, test, n_items, ks=(1,))
    # user 1: 1, 2 seen -> best unseen is 3 (relevant). user 2: 3 seen -> page [1] misses 4.
    assert result["HitRate@1"] == pytest.approx(0.5)
    assert result["MRR"] == pytest.approx((1 + 1 / 3) / 2)  # user 2 ranks 1, 2, 4 -> rank 3
