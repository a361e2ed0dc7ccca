"""Leakage checked on the trained artifacts, not only at the split: scramble everything that
happens in the test period (items, labels, later timestamps, impressions), rebuild each stage's
training products on the tiny world, and require them bit-identical."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cascade.data.schema import Dataset
from cascade.data.split import per_user_temporal, split_dataset
from services.rank.train import TrainConfig
from services.recall.tables import build_tables
from services.rerank.train import item_embeddings
from tests.conftest import make_tiny_dataset
from training.rank_train import prepare


def scramble_test_period(dataset: Dataset, seed: int = 7) -> Dataset:
    """Every test-period event gets another item and flipped labels; all but each user's first
    test event move later in time (the split's cut stays where it was); test-period impressions
    change item, position and click."""
    changed = copy.deepcopy(dataset)
    rng = np.random.default_rng(seed)
    log = changed.interactions
    test = per_user_temporal(log)
    rows = np.flatnonzero(test)
    log["item_id"][rows] = rng.integers(1, dataset.n_items, len(rows))
    for label in ("complete", "like", "share"):
        log[label][rows] = ~log[label][rows]
    first = {}
    for row in rows[np.argsort(log["ts"][rows], kind="stable")]:
        first.setdefault(int(log["user_id"][row]), row)
    later = np.setdiff1d(rows, list(first.values()))
    log["ts"][later] += 10_000
    cut = np.full(dataset.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(cut, log["user_id"][rows], log["ts"][rows])
    shown = changed.impressions
    in_test = np.flatnonzero(shown["ts"] >= cut[shown["user_id"]])
    shown["item_id"][in_test] = rng.integers(1, dataset.n_items, len(in_test))
    shown["position"][in_test] = rng.integers(0, 9, len(in_test)).astype(shown["position"].dtype)
    shown["click"][in_test] = ~shown["click"][in_test]
    return changed


@pytest.fixture(scope="module")
def worlds() -> tuple[Dataset, Dataset]:
    original = make_tiny_dataset(seed=3, n_users=30, n_items=60, n_events=500)
    return original, scramble_test_period(original)


def assert_same_tables(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            assert_same_tables(a[key], b[key], f"{where}/{key}")
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where}/{key}")


def test_the_scramble_really_changes_the_test_period(worlds):
    original, changed = worlds
    before, after = split_dataset(original), split_dataset(changed)
    assert not np.array_equal(
        before.test_interactions["item_id"], after.test_interactions["item_id"]
    )
    assert not np.array_equal(before.test_impressions["click"], after.test_impressions["click"])
    assert len(before.test_interactions["ts"]) > 50  # a real test period, not an empty one
    assert_same_tables(before.train_interactions, after.train_interactions, "train log")
    assert_same_tables(before.train_impressions, after.train_impressions, "train impressions")


def test_recall_tables_do_not_see_the_test_period(worlds):
    tables = [build_tables(w, split_dataset(w).train_interactions) for w in worlds]
    assert_same_tables(*tables, "recall")
    assert tables[0]["item_cf"] and tables[0]["popular"]  # something was built


def test_rank_training_rows_do_not_see_the_test_period(worlds):
    prepared = [prepare(w, TrainConfig(seed=0)) for w in worlds]
    for part in ("train", "validation"):
        rows_a, impressions_a = getattr(prepared[0], part)
        rows_b, impressions_b = getattr(prepared[1], part)
        assert_same_tables(rows_a, rows_b, f"rank {part} rows")
        assert_same_tables(impressions_a, impressions_b, f"rank {part} labels")
    assert len(prepared[0].train[1]["ts"]) > 100


def test_rerank_vectors_do_not_see_the_test_period(worlds):
    vectors = [
        item_embeddings(split_dataset(w).train_interactions, w.n_users, w.n_items, dim=4)
        for w in worlds
    ]
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert np.abs(vectors[0]).sum() > 0
