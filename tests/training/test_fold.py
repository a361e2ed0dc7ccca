"""Folding the event log into a dataset: served pages become labelled impressions, plays become
interactions, and users first seen online get a profile row."""

import numpy as np
import pyarrow as pa

from tests.conftest import make_tiny_dataset
from training.fold import fold, heard_interactions, served_impressions

IMPRESSIONS = pa.table(
    {
        "request_id": ["r1", "r2"],
        "user_id": pa.array([2, 99], pa.int64()),
        "request_time_ms": pa.array([1_000_000, 2_000_000], pa.int64()),
        "item_ids": pa.array([[5, 7, 9], [7, 3]], pa.list_(pa.int64())),
        "positions": pa.array([[0, 1, 2], [0, 1]], pa.list_(pa.int32())),
    }
)
EVENTS = pa.table(
    {
        "request_id": ["r1", "r1", "r1", "r1", "r2", "", "r1"],
        "user_id": pa.array([2, 2, 2, 2, 99, 2, 2], pa.int64()),
        "item_id": pa.array([7, 7, 7, 9, 3, 4, 7], pa.int64()),
        "event": ["click", "play", "like", "impression", "play", "play", "complete"],
        "timestamp_ms": pa.array(
            [1_001_000, 1_002_000, 1_005_000, 1_000_500, 2_003_000, 3_000_000, 1_004_000],
            pa.int64(),
        ),
    }
)


def test_served_pages_become_impressions_labelled_by_their_own_request():
    rows = served_impressions(EVENTS, IMPRESSIONS)
    assert rows["user_id"].tolist() == [2, 2, 2, 99, 99]
    assert rows["item_id"].tolist() == [5, 7, 9, 7, 3]
    assert rows["position"].tolist() == [0, 1, 2, 0, 1]
    assert rows["ts"].tolist() == [1000, 1000, 1000, 2000, 2000]
    assert rows["click"].tolist() == [False, True, False, False, False]
    assert rows["play"].tolist() == [False, True, False, False, True]
    assert rows["complete"].tolist() == [False, True, False, False, False]
    assert rows["like"].tolist() == [False, True, False, False, False]
    # Item 7 shown to user 99 in r2 was not played there: r1's play does not leak into r2.
    assert not rows["share"].any()


def test_plays_become_interactions_with_what_followed_them():
    rows = heard_interactions(EVENTS)
    got = {
        (u, i): (t, c, lk)
        for u, i, t, c, lk in zip(
            rows["user_id"].tolist(),
            rows["item_id"].tolist(),
            rows["ts"].tolist(),
            rows["complete"].tolist(),
            rows["like"].tolist(),
            strict=True,
        )
    }
    assert got == {
        (2, 7): (1002, True, True),
        (99, 3): (2003, False, False),
        (2, 4): (3000, False, False),
    }
    assert rows["play"].all() and np.isnan(rows["rating"]).all()


def test_fold_appends_in_time_order_and_adds_new_users():
    dataset = make_tiny_dataset(n_users=6, n_items=12)
    folded = fold(dataset, EVENTS, IMPRESSIONS)
    assert len(folded.interactions["user_id"]) == len(dataset.interactions["user_id"]) + 3
    assert np.all(np.diff(folded.interactions["ts"]) >= 0)
    assert len(folded.impressions["item_id"]) == len(dataset.impressions["item_id"]) + 5
    assert folded.users["user_id"].tolist() == [1, 2, 3, 4, 5, 6, 99]
    assert folded.users["age"][-1] == -1
    assert dataset.users["user_id"].tolist() == [1, 2, 3, 4, 5, 6]  # the input is untouched


def test_explored_slots_keep_their_flag_and_old_records_have_none():
    explored = pa.array([[False, False, True], None], pa.list_(pa.bool_()))  # r2: an old record
    rows = served_impressions(EVENTS, IMPRESSIONS.append_column("explored", explored))
    assert rows["explored"].tolist() == [False, False, True, False, False]
    assert "explored" not in served_impressions(EVENTS, IMPRESSIONS)
