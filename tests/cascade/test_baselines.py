"""Baselines on tiny handmade histories whose right answers can be worked out by hand."""

import math

import numpy as np
import pytest

from cascade.baselines import (
    EASE,
    CatalogTooLarge,
    ItemKNN,
    MostPopular,
    cooccurrence_blocks,
    evaluate_baselines,
    format_table,
)
from cascade.evaluation import UserItems
from cascade.metrics import top_k


def _interactions(histories: dict[int, list[int]]):
    pairs = [(user, item) for user, items in histories.items() for item in items]
    return {
        "user_id": np.array([u for u, _ in pairs], dtype=np.int64),
        "item_id": np.array([i for _, i in pairs], dtype=np.int64),
    }


# Items 1 and 2 always go together, so do 3 and 4, and 5 and 6. Users 5 and 6 have one of a pair.
PAIRS = _interactions({1: [1, 2], 2: [1, 2], 3: [3, 4], 4: [3, 4], 5: [1], 6: [3], 7: [5, 6]})


@pytest.mark.parametrize("model", [ItemKNN(neighbours=2), EASE(l2=1.0)], ids=["knn", "ease"])
def test_models_recover_the_co_occurrence_pattern(model):
    model.fit(PAIRS, n_users=8, n_items=7)
    scores = model.score(np.array([5, 6]))
    scores[[0, 1], [1, 3]] = -np.inf  # drop what each user already has
    assert top_k(scores, 1).ravel().tolist() == [2, 4]


def test_most_popular_ranks_by_training_count_for_everyone():
    train = _interactions({1: [3, 1, 5], 2: [3, 1], 3: [3]})  # counts: 3 x3, 1 x2, 5 x1
    scores = MostPopular().fit(train, n_users=4, n_items=7).score(np.array([1, 3]))
    assert top_k(scores, 3).tolist() == [[3, 1, 5], [3, 1, 5]]


def test_item_knn_sums_similarities_of_kept_neighbours():
    train = _interactions({1: [1, 2], 2: [1, 2], 3: [1, 3], 4: [1], 5: [2, 3]})
    # Users per item: 1 -> {1,2,3,4} (4), 2 -> {1,2,5} (3), 3 -> {3,5} (2).
    # cos(1,2) = 2/sqrt(4*3) = 0.57735, cos(1,3) = 1/sqrt(4*2) = 0.35355, cos(2,3) = 1/sqrt(6).
    s12, s13, s23 = 2 / math.sqrt(12), 1 / math.sqrt(8), 1 / math.sqrt(6)
    one = ItemKNN(neighbours=1).fit(train, n_users=6, n_items=4)
    # Item 1 keeps only item 2: user 4 ({1}) gets item 2 and nothing for item 3.
    np.testing.assert_allclose(one.score(np.array([4]))[0], [0, 0, s12, 0], rtol=1e-6)
    both = ItemKNN(neighbours=2).fit(train, n_users=6, n_items=4)
    # User 5 ({2, 3}): item 1 gets sim(2,1) + sim(3,1); item 2 gets sim(3,2); item 3 sim(2,3).
    np.testing.assert_allclose(both.score(np.array([5]))[0], [0, s12 + s13, s23, s23], rtol=1e-6)


def test_ease_weights_match_the_closed_form_by_hand():
    train = _interactions({1: [1, 2], 2: [1]})
    # On items (1, 2): X^T X + I = [[3, 1], [1, 2]], P = [[2, -1], [-1, 3]] / 5.
    # B_12 = -P_12 / P_22 = 0.2 / 0.6 = 1/3; B_21 = -P_21 / P_11 = 0.2 / 0.4 = 1/2; diagonal 0.
    model = EASE(l2=1.0).fit(train, n_users=3, n_items=3)
    np.testing.assert_allclose(model.weights, [[0, 0, 0], [0, 0, 1 / 3], [0, 0.5, 0]], atol=1e-6)
    np.testing.assert_allclose(model.score(np.array([2]))[0], [0, 0, 1 / 3], atol=1e-6)


def test_ease_refuses_a_catalog_above_its_limit():
    with pytest.raises(CatalogTooLarge, match="max_items=5"):
        EASE(max_items=5).fit(PAIRS, n_users=8, n_items=7)


def test_cooccurrence_blocks_equal_the_dense_gram_matrix():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 300), rng.integers(0, 40, 300)
    history = UserItems.from_pairs(users, items, 30, 40)
    dense = history.dense(np.arange(30), dtype=np.int64)
    gram = np.zeros((40, 40), dtype=np.int64)
    blocks = list(cooccurrence_blocks(history, max_cells=200))  # forces many small blocks
    assert len(blocks) > 5
    for start, block in blocks:
        gram[start : start + len(block)] = block
    np.testing.assert_array_equal(gram, dense.T @ dense)


def test_evaluate_baselines_rows_and_table(tiny_dataset):
    models = [MostPopular(), ItemKNN(neighbours=5), EASE(max_items=5)]
    rows = evaluate_baselines(tiny_dataset, ks=(2, 4), progress=False, models=models)
    assert [(r["protocol"], r["model"]) for r in rows] == [
        (p, m) for p in ("per_user", "global_cut") for m in ("MostPopular", "ItemKNN", "EASE")
    ]
    metric_columns = ["Recall@2", "Recall@4", "NDCG@2", "NDCG@4", "HitRate@4", "MRR"]
    for row in rows:
        if row["model"] == "EASE":  # 13 ids > max_items: reported, not crashed
            assert row["Recall@2"] is None and "max_items" in row["note"]
            continue
        assert 0 < row["n_test_users"] <= 6
        assert all(0.0 <= row[c] <= 1.0 for c in metric_columns)
        assert row["note"].startswith("noisy")  # a handful of test users
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[0].split()[:5] == ["dataset", "protocol", "model", "n_test_users", "Recall@2"]
    # Fixed width: every row's model name starts in the header's "model" column.
    column = table[0].index("model")
    assert all(
        line[column:].split()[0] == row["model"] for line, row in zip(table[2:], rows, strict=True)
    )
