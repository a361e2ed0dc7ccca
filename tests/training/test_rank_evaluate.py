"""The ablation report's pieces: the candidate re-ranking measure and the LR baseline."""

from __future__ import annotations

import numpy as np
import pytest

from services.rank.baseline import LogisticRegression
from services.rank.model import ModelConfig
from services.rank.train import fit, predict
from training.rank_evaluate import Candidates, markdown

from .conftest import TRAIN


@pytest.fixture(scope="module")
def candidates(trained):
    return Candidates(trained.prepared, n_candidates=10)


def test_ndcg_of_the_given_order_and_of_an_oracle(candidates):
    given = candidates.ndcg(None)
    n_users, n = candidates.items.shape
    same_order = candidates.ndcg(-np.tile(np.arange(n, dtype=np.float32), n_users))
    assert same_order == given
    hits, _ = candidates.relevance["plays"]
    oracle = candidates.ndcg(hits.astype(np.float32).reshape(-1))
    assert oracle["NDCG@10 plays"] >= given["NDCG@10 plays"]
    assert 0 < oracle["NDCG@10 plays"] <= 1
    assert len(candidates.rows["item_id"]) == n_users * n


def test_logistic_regression_trains_on_the_same_rows(trained):
    tasks = ("play", "like")
    model, info = fit(
        trained.prepared,
        tasks,
        ModelConfig(),
        TRAIN,
        model=LogisticRegression(trained.prepared.spec, tasks),
    )
    p = predict(model, trained.prepared.test[0], trained.prepared.spec)
    assert p.shape == (len(trained.prepared.test[1]["ts"]), 2)
    assert info["best_validation_logloss"] < np.log(2)


def test_markdown_has_one_line_per_row():
    report = {
        "dataset": "tiny",
        "tasks": ["play"],
        "rows_train": 1,
        "rows_validation": 1,
        "rows_test": 1,
        "ndcg_users": 1,
        "seconds": 1.0,
        "ease_order": {"model": "EASE order", "NDCG@10 plays": 0.5, "NDCG@10 likes": 0.25},
        "rows": [
            {
                "model": "m",
                "metrics": {"play": {"AUC": 0.7, "GAUC": None, "logloss": 0.3}},
                "NDCG@10 plays": 0.6,
                "NDCG@10 likes": 0.3,
                "epochs": 2,
            }
        ],
    }
    text = markdown(report)
    assert "| m | 0.7000 | - | 0.3000 | 0.6000 | 0.3000 | 2 |" in text
    assert "| EASE order | - | - | - | 0.5000 | 0.2500 | - |" in text


def test_true_utility_column_when_the_world_has_a_ground_truth(trained):
    from dataclasses import replace

    dataset = trained.dataset
    rng = np.random.default_rng(0)
    truth = {
        "user_taste": rng.normal(size=(dataset.n_users, 4)).astype(np.float32),
        "item_latent": rng.normal(size=(dataset.n_items, 4)).astype(np.float32),
        "item_quality": rng.normal(size=dataset.n_items).astype(np.float32),
        "creator_effect": rng.normal(size=8).astype(np.float32),
    }
    prepared = replace(trained.prepared, dataset=replace(dataset, truth=truth))
    candidates = Candidates(prepared, n_candidates=20)
    by_utility = candidates.ndcg(candidates.utility.reshape(-1))["true utility@10"]
    assert by_utility >= candidates.ndcg(None)["true utility@10"]
    assert by_utility > candidates.ndcg(-candidates.utility.reshape(-1))["true utility@10"]
