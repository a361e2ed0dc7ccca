"""One contract for the online-store backends: the embedded store, Redis (a real server) and a
Redis Cluster (three real masters).

Every test here runs against each backend: what a stage reads after Feedback must not depend on
where the state lives. Backend-specific behaviour (LRU eviction, idempotent replays, replicas
sharing a server, AOF after kill -9) is tested at the end.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cascade.data.split import per_user_temporal, take
from cascade.feature_store import InMemoryFeatureStore, StoreLimits, now_ms
from cascade.features import build_spec

BACKENDS = ["memory", "redis", "redis-cluster"]
URL_FIXTURES = {"redis": "redis_url", "redis-cluster": "redis_cluster_url"}


@pytest.fixture
def make_store(request, tiny_dataset):
    """make_store(backend, **limits) -> a store on the tiny dataset's training period."""
    made = []

    def make(backend: str, **limits):
        test = per_user_temporal(tiny_dataset.interactions)
        train = take(tiny_dataset.interactions, ~test)
        spec = build_spec(tiny_dataset)
        bounds = StoreLimits(**limits)
        if backend == "memory":
            return InMemoryFeatureStore(tiny_dataset, spec, train, limits=bounds)
        from cascade.redis_store import RedisFeatureStore

        url = request.getfixturevalue(URL_FIXTURES[backend])
        store = RedisFeatureStore(tiny_dataset, spec, train, url=url, limits=bounds)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _counters(store, items):
    if hasattr(store, "refresh"):
        store.refresh()  # Redis: the snapshot refreshes every second; tests do not wait
    return store.item_counters(np.asarray(items))


def _events(rows):
    users, items, ts, names = zip(*rows, strict=True)
    return np.array(users), np.array(items), np.array(ts), list(names)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plays_go_in_front_of_the_history_newest_by_event_time(make_store, backend):
    store = make_store(backend)
    before = store.history(np.array([2]))[0]
    store.record(*_events([(2, 7, 900, "play"), (2, 8, 950, "play"), (2, 9, 920, "play")]))
    after = store.history(np.array([2]))[0]
    # 9 arrived last but happened before 8: it is not the newest.
    assert after[:3].tolist() == [8, 9, 7]
    assert after[3:].tolist() == before[: len(before) - 3].tolist()
    assert store.history(np.array([0, 5000]))[:, 0].tolist() == [0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_consumed_holds_consumption_events_only(make_store, backend):
    store = make_store(backend)
    trained = set(store.consumed(3).tolist())
    store.record(*_events([(3, 11, 900, "like"), (3, 12, 901, "impression"), (3, 10, 902, "skip")]))
    assert set(store.consumed(3).tolist()) == trained | {11}
    assert store.recent_consumed(3, 5).tolist() == [11]


@pytest.mark.parametrize("backend", BACKENDS)
def test_counters_add_the_online_events_to_the_training_period(make_store, backend):
    store = make_store(backend)
    before = _counters(store, [4, 5, 0])
    store.record(*_events([(1, 4, 900, "play"), (2, 4, 901, "play"), (1, 5, 902, "impression")]))
    after = _counters(store, [4, 5, 0])
    assert (after["play"] - before["play"]).tolist() == [2, 0, 0]
    assert (after["impression"] - before["impression"]).tolist() == [0, 1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_uploaded_items_online_counters_count(make_store, backend):
    """An upload (AddItems) gets counters like any item: with Redis the snapshot was sized by
    the dataset and dropped every id beyond it, so uploads' counters stayed zero."""
    store = make_store(backend)
    upload = store.n_items + 2  # ids beyond the dataset, one left unused
    categories = np.zeros((1, 6), dtype=np.int16)
    categories[0, 0] = 1
    assert store.add_items([upload], [1], categories, [1000]) == 1
    store.record(*_events([(2, upload, 1001, "impression"), (2, upload, 1002, "play")]))
    store.record(*_events([(3, upload, 1003, "play")]))
    counts = _counters(store, [upload, upload - 1])
    assert counts["play"].tolist() == [2, 0]
    assert counts["impression"].tolist() == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_event_writes_nothing(make_store, backend):
    store = make_store(backend)
    before = _counters(store, [1])["play"].copy()
    with pytest.raises(ValueError, match="unknown event"):
        store.record(*_events([(1, 1, 900, "play"), (1, 1, 901, "dance")]))
    assert _counters(store, [1])["play"].tolist() == before.tolist()
    assert 1 not in store.recent_consumed(1, 10).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shown_items_expire_after_the_ttl(make_store, backend):
    store = make_store(backend, shown_ttl_s=60)
    now = now_ms()
    store.record_shown(4, np.array([3, 5, 7]), now)
    store.record_shown(4, np.array([9]), now - 61_000)  # shown a minute ago: expired
    assert store.shown(4).tolist() == [3, 5, 7]
    assert store.shown(5).tolist() == []
    # On a request's own clock (a simulation's, days from the wall clock) the TTL runs on it.
    day = 86_400_000
    store.record_shown(6, np.array([2, 4]), now - 3 * day)
    assert store.shown(6).tolist() == []  # long expired by the wall clock
    assert store.shown(6, at_ms=now - 3 * day + 59_000).tolist() == [2, 4]
    assert store.shown(6, at_ms=now - 2 * day).tolist() == []  # a simulated day later


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_user_state_is_capped(make_store, backend):
    store = make_store(backend, recent_plays=3, consumed=4, shown=2)
    store.record(*_events([(6, i, 1000 + i, "play") for i in range(1, 9)]))
    history = store.history(np.array([6]))[0]
    assert history[:3].tolist() == [8, 7, 6]  # only the 3 newest online plays are kept
    assert store.recent_consumed(6, 10).tolist() == [8, 7, 6, 5]
    store.record_shown(6, np.array([1, 2, 3]), now_ms())
    assert len(store.shown(6)) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_huge_user_id_costs_what_a_small_one_costs(make_store, backend):
    store = make_store(backend)
    sizes = store._trained.nbytes, store._counters.nbytes
    store.record(*_events([(99_999_999, 3, 900, "play"), (2**62, 4, 901, "like")]))
    assert store.history(np.array([99_999_999]))[0, 0] == 3
    assert store.recent_consumed(2**62, 5).tolist() == [4]
    assert (store._trained.nbytes, store._counters.nbytes) == sizes


def _log(rows) -> pa.Table:
    users, items, ts, names = _events(rows)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "user_key": [str(u) for u in users],
            "item_id": pa.array(items, pa.int64()),
            "event": names,
            "timestamp_ms": pa.array(ts * 1000, pa.int64()),
            "request_id": [""] * len(users),
            "logged_ms": pa.array(ts * 1000, pa.int64()),
        }
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebuild_from_the_event_log_restores_the_online_state(make_store, backend):
    rows = [(2, 7, 900, "play"), (3, 8, 901, "like"), (70, 9, 902, "play"), (2, 5, 903, "skip")]
    live = make_store("memory")
    live.record(*_events(rows))
    restarted = make_store(backend)
    assert restarted.rebuild(_log(rows)) == len(rows)
    users = np.array([2, 3, 70])
    np.testing.assert_array_equal(restarted.history(users), live.history(users))
    for user in users.tolist():
        assert restarted.consumed(user).tolist() == live.consumed(user).tolist()
    items = np.arange(1, 13)
    for event, counts in _counters(live, items).items():
        assert _counters(restarted, items)[event].tolist() == counts.tolist(), event


# -- backend-specific ----------------------------------------------------------------------------
def test_memory_forgets_the_least_recently_active_users_beyond_max_users(make_store):
    store = make_store("memory", max_users=2)
    store.record(*_events([(101, 1, 900, "play"), (102, 2, 901, "play"), (101, 3, 902, "play")]))
    store.record(*_events([(103, 4, 903, "play")]))
    assert store.online_users == 2
    assert store.history(np.array([101, 102, 103]))[:, 0].tolist() == [3, 0, 4]


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_redis_applies_a_repeated_event_once(make_store, backend):
    store = make_store(backend)
    batch = _events([(1, 4, 900, "play"), (1, 4, 901, "play")])
    before = _counters(store, [4])["play"][0]
    assert store.record(*batch) == 2
    assert store.record(*batch) == 0  # a retried Feedback write
    assert _counters(store, [4])["play"][0] == before + 2
    assert store.history(np.array([1]))[0, :2].tolist() == [4, 4]


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_redis_replicas_read_the_same_state(make_store, backend):
    one, two = make_store(backend), make_store(backend)
    one.record(*_events([(5, 6, 900, "play"), (5, 7, 901, "like")]))
    two.record_shown(5, np.array([8]), now_ms())
    assert two.history(np.array([5]))[0, 0] == 6
    assert 7 in two.consumed(5) and one.shown(5).tolist() == [8]
    one.refresh(), two.refresh()
    assert one.counter_totals() == two.counter_totals()


def test_redis_keeps_acknowledged_writes_across_kill_9(make_store, redis_process):
    store = make_store("redis")
    store.record(*_events([(5, 6, 900, "play")]))
    redis_process.kill()
    redis_process.restart()
    assert store.history(np.array([5]))[0, 0] == 6


def test_redis_down_reads_degrade_and_writes_raise(make_store, redis_process):
    import redis

    store = make_store("redis")
    trained = store.history(np.array([2]))
    redis_process.kill()
    np.testing.assert_array_equal(store.history(np.array([2])), trained)
    assert store.read_failures >= 1
    with pytest.raises(redis.RedisError):
        store.record(*_events([(2, 3, 900, "play")]))


# -- Redis Cluster -------------------------------------------------------------------------------
def test_cluster_spreads_the_online_state_over_every_master(make_store, redis_cluster):
    import redis

    from cascade.backends import open_event_log
    from cascade.redis_ids import RedisIdMap

    store = make_store("redis-cluster")
    rows = [(user, 1 + user % 12, 900 + user, "play") for user in range(1, 41)]
    assert store.record(*_events(rows)) == len(rows)
    RedisIdMap.from_url(redis_cluster.url, "users", 100).assign(["new-user"])
    open_event_log(redis_cluster.url).append_events(_log(rows))
    sizes = [redis.Redis(port=m.port).dbsize() for m in redis_cluster.masters]
    assert all(size > 0 for size in sizes), sizes
    assert store.history(np.arange(1, 41))[:, 0].tolist() == [r[1] for r in rows]


def test_cluster_batch_failing_part_way_is_completed_by_its_retry_once(make_store):
    """A batch spanning users runs one script per slot; when one fails after others applied,
    record raises (Feedback answers UNAVAILABLE) and the retry applies only what was missing."""
    import redis

    store = make_store("redis-cluster")
    rows = [(user, 3, 900 + user, "play") for user in (1, 2, 3, 4, 5, 6)]
    before = _counters(store, [3])["play"][0]
    state = store.state
    script, calls = state._record, []

    def fail_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise redis.ConnectionError("a master went away")
        return script(*args, **kwargs)

    state._record = fail_third
    with pytest.raises(redis.ConnectionError):
        store.record(*_events(rows))
    assert len(calls) == 3  # the parts after the failed one were not attempted
    state._record = script
    assert 0 <= store.record(*_events(rows)) <= len(rows)  # the retry: what was missing
    assert store.record(*_events(rows)) == 0  # complete: a third try changes nothing
    assert _counters(store, [3])["play"][0] == before + len(rows)
    assert state.recent_plays([user for user, *_ in rows], 5) == [[3]] * len(rows)
