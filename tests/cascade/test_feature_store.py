"""The embedded feature store: offline/online parity, events, thread safety."""

import threading

import numpy as np
import pytest

from cascade.data import load_dataset, prepare
from cascade.data.split import per_user_temporal, take
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec, encode, history_before


def _store(dataset):
    test = per_user_temporal(dataset.interactions)
    train = take(dataset.interactions, ~test)
    return InMemoryFeatureStore(dataset, build_spec(dataset), train), train


def _parity(dataset, user_sample, item_sample):
    store, train = _store(dataset)
    spec = store.spec
    # Offline: training rows built straight from the dataset tables.
    users = dataset.users
    at = np.searchsorted(users["user_id"], user_sample)
    offline_users = encode(spec, "user", {k: v[at] for k, v in users.items()})
    items = dataset.items
    at = np.searchsorted(items["item_id"], item_sample)
    offline_items = encode(spec, "item", {k: v[at] for k, v in items.items()})
    offline_history = history_before(
        train, user_sample, np.full(len(user_sample), 2**32), spec.history_length
    )
    # Online: the store.
    online_users = store.user_features(user_sample)
    online_items = store.item_features(item_sample)
    for name in offline_users:
        np.testing.assert_array_equal(online_users[name], offline_users[name], err_msg=name)
    for name in offline_items:
        np.testing.assert_array_equal(online_items[name], offline_items[name], err_msg=name)
    np.testing.assert_array_equal(store.history(user_sample), offline_history)


def test_offline_online_parity_tiny(tiny_dataset):
    _parity(tiny_dataset, np.arange(1, 7), np.arange(1, 13))


def test_offline_online_parity_movielens(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    prepare("ml-100k", data_dir)
    dataset = load_dataset("ml-100k", data_dir)
    rng = np.random.default_rng(0)
    _parity(
        dataset,
        rng.choice(dataset.users["user_id"], 200, replace=False),
        rng.choice(dataset.items["item_id"], 300, replace=False),
    )


def test_play_events_extend_history_and_consumed(tiny_dataset):
    store, _ = _store(tiny_dataset)
    before = store.history(np.array([2]))[0]
    store.record(
        np.array([2, 2, 2]),
        np.array([7, 9, 9]),
        np.array([900, 901, 902]),
        ["play", "like", "impression"],
    )
    after = store.history(np.array([2]))[0]
    assert after[0] == 7 and after[1:].tolist() == before[:-1].tolist()
    assert {7, 9} <= set(store.consumed(2).tolist())
    counters = store.item_counters(np.array([9, 0]))
    assert counters["like"][1] == 0 and counters["impression"][0] >= 1


def test_new_user_gets_a_history(tiny_dataset):
    store, _ = _store(tiny_dataset)
    store.record(np.array([50]), np.array([3]), np.array([1]), ["play"])
    assert store.history(np.array([50, 51]))[:, 0].tolist() == [3, 0]
    assert store.user_features(np.array([50]))["user_id"].tolist() == [0]  # no profile yet


def test_unknown_event_writes_nothing(tiny_dataset):
    store, _ = _store(tiny_dataset)
    before = store.item_counters(np.array([1]))["play"].copy()
    with pytest.raises(ValueError, match="unknown event"):
        store.record(np.array([1, 1]), np.array([1, 1]), np.array([0, 0]), ["play", "dance"])
    assert store.item_counters(np.array([1]))["play"].tolist() == before.tolist()


def test_concurrent_writers_lose_no_event(tiny_dataset):
    store, _ = _store(tiny_dataset)
    start = store.item_counters(np.array([5]))["play"][0]

    def write():
        for _ in range(200):
            store.record(np.array([1]), np.array([5]), np.array([0]), ["play"])
            store.history(np.array([1, 2, 3]))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.item_counters(np.array([5]))["play"][0] == start + 800
    assert (store.history(np.array([1]))[0] == 5).all()
