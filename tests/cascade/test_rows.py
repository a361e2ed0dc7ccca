"""Offline training rows and online serving rows are the same arrays (on the tiny ranker's data
and feature store, tests/services/rank/conftest.py)."""

from __future__ import annotations

import numpy as np

from cascade.rows import OfflineRows, online_rows
from tests.services.rank.conftest import trained

__all__ = ["trained"]  # the fixture


def test_online_rows_equal_offline_rows_for_test_impressions(trained):
    """At serving time (after the training period) the store holds what training saw: offline
    rows at a time after the whole training log (the per-user split's test impressions can be
    older than other users' training plays, which the store's counters already hold)."""
    data = trained.prepared.split
    offline = OfflineRows(trained.dataset, trained.prepared.spec, data.train_interactions)
    impressions = data.test_impressions
    checked = 0
    for user in np.unique(impressions["user_id"]):
        mine = impressions["user_id"] == user
        items = impressions["item_id"][mine]
        after_training = np.full(len(items), 2**32)
        expected = offline.rows(np.full(len(items), user), items, after_training)
        got = online_rows(trained.store, int(user), items)
        assert expected.keys() == got.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        checked += len(items)
    assert checked == len(impressions["ts"]) > 20


def test_training_history_is_strictly_before_the_impression(trained):
    data = trained.prepared.split
    offline = OfflineRows(trained.dataset, trained.prepared.spec, data.train_interactions)
    log = data.train_interactions
    first = np.argmin(log["ts"])
    rows = offline.rows(log["user_id"][[first]], log["item_id"][[first]], log["ts"][[first]])
    assert not rows["history"].any()  # nothing happened before the first event


def test_recent_items_go_before_stored_history_and_unknown_ones_are_dropped(trained):
    stored = trained.store.history(np.array([1]))[0]
    rows = online_rows(trained.store, 1, np.array([2, 3]), np.array([5, 10**9, 7]))
    expected = np.concatenate([[5, 7], stored[stored > 0]])[: len(stored)]
    np.testing.assert_array_equal(rows["history"][0][: len(expected)], expected)
    assert rows["history"].shape == (2, len(stored))
    np.testing.assert_array_equal(rows["item_id"], [2, 3])


def test_a_played_upload_past_the_vocabulary_is_the_unknown_history_row(trained):
    """Once exploration shows uploads, users play items the spec never saw: in the history the
    retrain folds (and a shared store serves) they must encode to row 0, not index past the
    embedding table (the daily retrain failed with IndexError on day 2 of a run exploring)."""
    from cascade.rows import assemble

    spec = trained.prepared.spec
    (field,) = spec.of("history")
    user = trained.store.user_features(np.array([1]))
    item = trained.store.item_features(np.array([1, 2]))
    history = np.zeros(spec.history_length, dtype=np.int64)
    history[:3] = [field.vocab_size + 5, 3, field.vocab_size]  # two uploads around item 3
    rows = assemble(spec, user, item, history)
    assert rows[field.name][0, :3].tolist() == [0, 3, 0]
    assert rows[field.name].max() < field.vocab_size
