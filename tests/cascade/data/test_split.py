"""Temporal splits never leak the future into training."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.data.split import global_time_cut, per_user_temporal, take


def _table(users, ts):
    return {"user_id": np.asarray(users, dtype=np.int64), "ts": np.asarray(ts, dtype=np.int64)}


def test_per_user_takes_each_users_latest_fifth():
    users = [1] * 10 + [2] * 5 + [3]
    ts = list(range(10, 0, -1)) + [5, 1, 4, 2, 3] + [7]
    test = per_user_temporal(_table(users, ts))
    assert sorted(np.asarray(ts[:10])[test[:10]].tolist()) == [9, 10]  # ceil(0.2 * 10) = 2
    assert np.asarray(ts[10:15])[test[10:15]].tolist() == [5]  # ceil(0.2 * 5) = 1
    assert not test[15]  # a single interaction stays in training


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 20)), min_size=1, max_size=80))
def test_no_leakage_per_user(rows):
    table = _table([u for u, _ in rows], [t for _, t in rows])
    test = per_user_temporal(table)
    for user in np.unique(table["user_id"]):
        mine = table["user_id"] == user
        if (mine & test).any() and (mine & ~test).any():
            assert table["ts"][mine & ~test].max() <= table["ts"][mine & test].min()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 20)), min_size=1, max_size=80))
def test_no_leakage_global_cut(rows):
    table = _table([u for u, _ in rows], [t for _, t in rows])
    cut, test = global_time_cut(table)
    assert (table["ts"][~test] < cut).all() and (table["ts"][test] >= cut).all()
    assert test.any()


def test_take_keeps_columns_aligned():
    table = _table([1, 2, 3], [30, 20, 10])
    part = take(table, np.array([True, False, True]))
    assert part["user_id"].tolist() == [1, 3] and part["ts"].tolist() == [30, 10]


def test_split_dataset_cuts_every_table_at_the_users_first_test_event(tiny_dataset):
    from cascade.data.split import split_dataset

    parts = split_dataset(tiny_dataset)
    first_test = {}
    for user, ts in zip(
        parts.test_interactions["user_id"], parts.test_interactions["ts"], strict=True
    ):
        first_test[int(user)] = min(first_test.get(int(user), ts), ts)
    for user, ts in zip(
        parts.train_impressions["user_id"], parts.train_impressions["ts"], strict=True
    ):
        assert ts < first_test.get(int(user), np.iinfo(np.int64).max)
    for user, ts in zip(
        parts.test_impressions["user_id"], parts.test_impressions["ts"], strict=True
    ):
        assert ts >= first_test[int(user)]
    n = len(tiny_dataset.impressions["ts"])
    assert len(parts.train_impressions["ts"]) + len(parts.test_impressions["ts"]) == n
