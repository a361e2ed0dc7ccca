"""Feedback event validation (cascade/events.py) as a table with the clock injected, the same
checks when recall's Record is called directly, and the gateway's bounded record of users."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cascade.events import EVENT_NAMES, MAX_FUTURE_S, check_events
from cascade.v1 import gateway_pb2
from gateway.online import OnlineEvents

NOW_S = 1_700_000_000.0
KNOWN = {1, 2, 3, 7}
PLAY = gateway_pb2.EVENT_TYPE_PLAY
LAST_OK_MS = int((NOW_S + MAX_FUTURE_S) * 1000)


def known_items(ids: np.ndarray) -> np.ndarray:
    return np.array([int(i) in KNOWN for i in ids], dtype=bool)


def event(user=5, item=2, kind=PLAY, ts_ms=0) -> gateway_pb2.Event:
    return gateway_pb2.Event(user_id=user, item_id=item, type=kind, timestamp_ms=ts_ms)


# (event, the reason's field or None when valid, the stored Unix seconds when valid)
CASES = [
    (event(), None, int(NOW_S)),  # 0 = now
    (event(ts_ms=1_600_000_000_123), None, 1_600_000_000),  # milliseconds -> seconds
    (event(ts_ms=1), None, 0),  # 1 ms after the epoch is a real (old) time
    (event(ts_ms=LAST_OK_MS), None, LAST_OK_MS // 1000),  # exactly a day ahead: accepted
    (event(ts_ms=LAST_OK_MS + 1), "timestamp_ms: {} is more than a day ahead", None),
    (event(ts_ms=2**62), "timestamp_ms: {} is more than a day ahead", None),
    (event(ts_ms=-1), "timestamp_ms: must be >= 0", None),
    (event(user=0), "user_id: must be > 0, got 0", None),  # anonymous users send no feedback
    (event(user=-3), "user_id: must be > 0, got -3", None),
    (event(item=0), "item_id: 0 is not in the catalog", None),
    (event(item=4), "item_id: 4 is not in the catalog", None),
    (event(item=-2), "item_id: -2 is not in the catalog", None),
    (event(kind=0), "type: 0 is not a known event type", None),
    (event(kind=99), "type: 99 is not a known event type", None),
    # Several faults: the first check in the order user, item, type, timestamp wins.
    (event(user=0, item=4, kind=0, ts_ms=-1), "user_id: must be > 0, got 0", None),
    (event(item=4, kind=0, ts_ms=-1), "item_id: 4 is not in the catalog", None),
    (event(kind=99, ts_ms=-1), "type: 99 is not a known event type", None),
]


@pytest.mark.parametrize("message, reason, stored_s", CASES)
def test_one_event(message, reason, stored_s):
    checked = check_events([message], known_items, now_s=NOW_S)
    if reason is None:
        assert checked.rejected == [] and checked.indices.tolist() == [0]
        assert checked.ts.tolist() == [stored_s]
        assert checked.user_ids.tolist() == [message.user_id]
        assert checked.item_ids.tolist() == [message.item_id]
    else:
        assert checked.indices.tolist() == [] and len(checked.rejected) == 1
        index, text = checked.rejected[0]
        assert index == 0 and text.startswith(reason.format(message.timestamp_ms))


def test_a_batch_keeps_the_valid_events_in_order_and_reports_each_bad_one_by_position():
    messages = [message for message, _, _ in CASES]
    checked = check_events(messages, known_items, now_s=NOW_S)
    valid = [i for i, (_, reason, _) in enumerate(CASES) if reason is None]
    assert checked.indices.tolist() == valid
    assert [index for index, _ in checked.rejected] == [
        i for i, (_, reason, _) in enumerate(CASES) if reason is not None
    ]
    assert checked.ts.tolist() == [CASES[i][2] for i in valid]


def test_every_wire_event_type_maps_to_its_store_name():
    kinds = {value.name: value.number for value in gateway_pb2.EventType.DESCRIPTOR.values}
    expected = {
        "impression": 1,
        "click": 2,
        "play": 3,
        "complete": 4,
        "like": 5,
        "share": 6,
        "skip": 7,
    }
    assert {name: kinds[f"EVENT_TYPE_{name.upper()}"] for name in expected} == expected
    for name, number in expected.items():
        checked = check_events([event(kind=number)], known_items, now_s=NOW_S)
        assert checked.names == [name]
    assert 0 not in EVENT_NAMES


def test_an_empty_batch_is_empty():
    checked = check_events([], known_items, now_s=NOW_S)
    assert len(checked.indices) == 0 and checked.rejected == [] and checked.names == []


def test_recall_record_called_directly_applies_the_same_checks(built):
    """A stage never trusts its caller: Record on recall rejects what the gateway would, and
    writes only the valid events into its store."""
    from cascade.client import make_channel
    from services.recall.server import RecallSettings
    from services.recall.server import start as start_recall
    from tests.gateway.conftest import QUIET

    running = start_recall(
        RecallSettings(artifacts=built.artifacts, data_dir=built.data_dir, server=QUIET)
    )
    service = running.service
    try:
        store = service.state.store
        user = 11
        history_before = store.history(np.array([user]))[0].tolist()
        plays_before = store.item_counters(np.array([5]))["play"][0]
        far_future_ms = 10**15  # year 33658
        request = gateway_pb2.FeedbackRequest(
            events=[
                event(user=user, item=5),
                event(user=0, item=5),
                event(user=user, item=10**6),
                event(user=user, item=5, kind=0),
                event(user=user, item=5, ts_ms=-5),
                event(user=user, item=5, ts_ms=far_future_ms),
            ]
        )
        with make_channel(running.address, retry_methods=()) as channel:
            record = channel.unary_unary(
                "/cascade.v1.Recall/Record",
                request_serializer=gateway_pb2.FeedbackRequest.SerializeToString,
                response_deserializer=gateway_pb2.FeedbackResponse.FromString,
            )
            reply = record(request, timeout=10)
            too_many = gateway_pb2.FeedbackRequest(
                events=[event(user=user, item=5)] * (service.settings.max_record_events + 1)
            )
            with pytest.raises(grpc.RpcError) as error:
                record(too_many, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reply.accepted == 1
        assert [(r.index, r.reason.split(":")[0]) for r in reply.rejected] == [
            (1, "user_id"),
            (2, "item_id"),
            (3, "type"),
            (4, "timestamp_ms"),
            (5, "timestamp_ms"),
        ]
        history = store.history(np.array([user]))[0].tolist()
        assert (
            history[0] == 5
            and history[1:] == [i for i in history_before if i != 5][: len(history) - 1]
        )
        assert store.item_counters(np.array([5]))["play"][0] == plays_before + 1  # once only
    finally:
        running.stop(0)


def test_online_events_keep_consumption_newest_first_each_once_and_capped_per_user():
    online = OnlineEvents(per_user=3)
    users = np.array([1, 1, 1, 1, 1, 1])
    items = np.array([10, 11, 10, 12, 13, 14])
    names = ["play", "click", "like", "impression", "complete", "skip"]
    online.record(users, items, names)
    assert online.recent(1) == [13, 10]  # click, impression and skip are not consumption
    online.record(np.array([1, 1]), np.array([20, 21]), ["share", "play"])
    assert online.recent(1) == [21, 20, 13]  # at most per_user, newest first
    assert online.recent(2) == []


def test_online_events_forget_the_least_recently_active_users_beyond_the_cap():
    online = OnlineEvents(per_user=5, max_users=2)
    online.record(np.array([1, 2]), np.array([10, 20]), ["play", "play"])
    online.record(np.array([1]), np.array([11]), ["play"])  # user 1 is now the most recent
    online.record(np.array([3]), np.array([30]), ["play"])  # over the cap: user 2 goes
    assert (online.recent(1), online.recent(2), online.recent(3)) == ([11, 10], [], [30])
    online.record(np.array([4]), np.array([40]), ["click"])  # not consumption: not remembered
    assert online.recent(1) == [11, 10] and online.recent(3) == [30]
    with pytest.raises(ValueError):
        OnlineEvents(per_user=0)
    with pytest.raises(ValueError):
        OnlineEvents(per_user=1, max_users=0)
