"""The embedded feature store against independent references: plain loops over the raw tables
(never the encoding helpers the store itself calls), before and after online events; events,
thread safety."""

import threading

import numpy as np
import pytest

from cascade.data import load_dataset, prepare
from cascade.data.split import per_user_temporal, take
from cascade.feature_store import CONSUMPTION, InMemoryFeatureStore
from cascade.features import build_spec


def _store(dataset):
    test = per_user_temporal(dataset.interactions)
    train = take(dataset.interactions, ~test)
    return InMemoryFeatureStore(dataset, build_spec(dataset), train), train


def _reference_value(field, raw) -> int:
    """One raw value -> its embedding row, by the spec's documented rule, in plain Python."""
    raw = int(raw)
    if field.kind == "bucket":  # row 0 = unknown (negative), then 1 + boundaries passed
        return 0 if raw < 0 else 1 + sum(1 for b in field.boundaries if b <= raw)
    return raw if 0 < raw < field.vocab_size else 0  # ids: out of vocabulary -> 0


def _reference_features(spec, entity: str, table: dict, id_column: str, ids) -> dict:
    row_of = {int(v): row for row, v in enumerate(table[id_column])}
    out = {}
    for field in spec.of(entity):
        column = table[field.column]
        values = []
        for entity_id in ids:
            row = row_of.get(int(entity_id))
            if row is None:  # unknown entity: the all-zero row
                raw = np.zeros(np.shape(column[0]), dtype=np.int64)
                values.append(raw if raw.ndim else 0)
                continue
            raw = column[row]
            if np.ndim(raw):
                values.append([_reference_value(field, v) for v in raw])
            else:
                values.append(_reference_value(field, raw))
        out[field.name] = np.asarray(values, dtype=np.int64)
    return out


def _reference_history(log: dict, user: int, length: int, online_plays=()) -> list[int]:
    """The user's items, oldest to newest by (ts, position in the log), then online plays;
    newest first, 0-padded."""
    rows = [
        (int(log["ts"][i]), i, int(log["item_id"][i]))
        for i in range(len(log["ts"]))
        if int(log["user_id"][i]) == user
    ]
    items = [item for _, _, item in sorted(rows)] + list(online_plays)
    newest = items[::-1][:length]
    return newest + [0] * (length - len(newest))


def _parity(dataset, user_sample, item_sample):
    store, train = _store(dataset)
    spec = store.spec
    expected_users = _reference_features(spec, "user", dataset.users, "user_id", user_sample)
    expected_items = _reference_features(spec, "item", dataset.items, "item_id", item_sample)
    online_users = store.user_features(user_sample)
    online_items = store.item_features(item_sample)
    assert expected_users.keys() == online_users.keys()
    assert expected_items.keys() == online_items.keys()
    for name in expected_users:
        np.testing.assert_array_equal(online_users[name], expected_users[name], err_msg=name)
    for name in expected_items:
        np.testing.assert_array_equal(online_items[name], expected_items[name], err_msg=name)
    length = spec.history_length
    expected_history = [_reference_history(train, int(u), length) for u in user_sample]
    np.testing.assert_array_equal(store.history(user_sample), expected_history)
    return store, train


def test_offline_online_parity_tiny(tiny_dataset):
    # 99 and 0: a user id and an item id the tables do not have.
    _parity(tiny_dataset, np.array([1, 2, 3, 4, 5, 6, 99]), np.array([*range(1, 13), 0, 99]))


def test_parity_after_online_events_against_plain_loops(tiny_dataset):
    users = np.arange(1, 7)
    store, train = _parity(tiny_dataset, users, np.arange(1, 13))
    events = [
        (2, 7, "play"),
        (2, 9, "like"),
        (3, 4, "play"),
        (2, 4, "play"),
        (3, 4, "skip"),
        (5, 11, "complete"),
        (2, 1, "impression"),
        (5, 12, "share"),
    ]
    counters_before = store.item_counters(np.arange(13))
    store.record(
        np.array([u for u, _, _ in events]),
        np.array([i for _, i, _ in events]),
        np.arange(900, 900 + len(events)),
        [e for _, _, e in events],
    )
    length = store.spec.history_length
    for user in users.tolist():
        plays = [i for u, i, e in events if u == user and e == "play"]
        expected = _reference_history(train, user, length, plays)
        assert store.history(np.array([user]))[0].tolist() == expected, user
        logged = {
            int(i) for u, i in zip(train["user_id"], train["item_id"], strict=True) if u == user
        }
        online = {i for u, i, e in events if u == user and e in CONSUMPTION}
        assert store.consumed(user).tolist() == sorted(logged | online), user
    after = store.item_counters(np.arange(13))
    for name in after:
        added = [0] * 13
        for _, item, event in events:
            added[item] += event == name
        assert (after[name] - counters_before[name]).tolist() == added, name


@pytest.mark.network
def test_offline_online_parity_movielens(tmp_path_factory, ml100k_raw):
    data_dir = tmp_path_factory.mktemp("data")
    prepare("ml-100k", ml100k_raw(data_dir))
    dataset = load_dataset("ml-100k", data_dir)
    rng = np.random.default_rng(0)
    _parity(
        dataset,
        rng.choice(dataset.users["user_id"], 50, replace=False),
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
