"""The gateway's durable state: Feedback acknowledged only once on the event log, impression
records, ids at the boundary (the 99999999 case), restarts, request time and late events."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

from cascade.backends import open_event_log
from cascade.client import field_violations
from cascade.eventlog import FileEventLog
from cascade.v1 import common_pb2, gateway_pb2
from gateway.cli import feedback_main
from gateway.client import CascadeClient
from gateway.impressions import stage_scores
from gateway.online import OnlineEvents
from gateway.server import start
from tests.gateway.conftest import HAS_PRERANK

pytestmark = pytest.mark.timeout(120)
PLAY = gateway_pb2.EVENT_TYPE_PLAY


def client_for(stack) -> CascadeClient:
    return CascadeClient(stack.gateway.address, timeout_s=5.0)


def logged_events(stack):
    """What a reader opening the log sees (a second reader: the gateway's own is not asked)."""
    return FileEventLog(
        stack.settings.event_log.removeprefix("file:"), read_only=True
    ).read_events()


def metric(stack, name: str, labels: dict | None = None) -> float:
    return stack.gateway.registry.get_sample_value(name, labels or {}) or 0.0


def test_feedback_is_on_the_log_when_it_returns_and_a_repeat_is_logged_once(stack_factory):
    stack = stack_factory()
    store = stack.recall_service.state.store
    plays_before = store.item_counters(np.array([7]))["play"][0]
    event = gateway_pb2.Event(
        user_id=3, item_id=7, type=PLAY, timestamp_ms=1_700_000_000_123, request_id="req-1"
    )
    with client_for(stack) as client:
        assert client.feedback([event, (3, 9, "like")]).accepted == 2
        first = logged_events(stack)
        assert client.feedback([event]).accepted == 1  # a client retry: stored already
    assert first.num_rows == 2
    play, like = first.to_pylist()
    assert (play["user_id"], play["user_key"], play["item_id"]) == (3, "3", 7)
    assert (play["event"], play["timestamp_ms"], play["request_id"]) == (
        "play",
        1_700_000_000_123,
        "req-1",
    )
    assert abs(play["logged_ms"] - time.time() * 1000) < 60_000
    # Time 0 means "now": the gateway's clock (here the replayed data's) stamps it.
    as_of_ms = stack.gateway.service.catalog.as_of_s * 1000
    assert as_of_ms <= like["timestamp_ms"] <= stack.gateway.service.now_ms()
    assert logged_events(stack).num_rows == 2
    # Recall heard the play once, not twice.
    assert store.item_counters(np.array([7]))["play"][0] == plays_before + 1


def test_feedback_fails_unavailable_and_claims_nothing_when_the_log_is_down(
    stack_factory, redis_process
):
    stack = stack_factory(event_log=redis_process.url)
    store = stack.recall_service.state.store
    first, refused, third = [i for i in range(1, 60) if i not in store.consumed(4)][:3]
    with client_for(stack) as client:
        assert client.feedback([(4, first, "play")]).accepted == 1
        redis_process.kill()
        with pytest.raises(grpc.RpcError) as error:
            client.feedback([(4, refused, "play")])
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "event log" in error.value.details()
        redis_process.restart()
        assert client.feedback([(4, third, "play")]).accepted == 1
    assert metric(stack, "cascade_gateway_event_log_failures_total") == 1
    assert metric(stack, "cascade_gateway_feedback_events_total", {"outcome": "accepted"}) == 2
    # Neither the log nor recall nor the gateway's view has the refused event.
    logged = open_event_log(redis_process.url).read_events()["item_id"].to_pylist()
    assert logged == [first, third]
    assert stack.gateway.service.online.recent(4) == [third, first]
    assert refused not in store.consumed(4) and third in store.consumed(4)


def test_feedback_while_recall_is_down_is_acknowledged_and_logged(stack_factory):
    stack = stack_factory()
    stack.stop_stage("recall")
    with client_for(stack) as client:
        reply = client.feedback([(5, 4, "play"), (5, 6, "complete")])
    assert reply.accepted == 2 and not reply.rejected
    assert logged_events(stack)["item_id"].to_pylist() == [4, 6]
    assert metric(stack, "cascade_gateway_record_failures_total") == 1


def test_every_answer_is_logged_as_an_impression_with_positions_and_stage_scores(stack_factory):
    stack = stack_factory(clock="wall")
    with client_for(stack) as client:
        answers = [client.recommend(user, count=5) for user in (2, 0, 123_456)]
    stack.gateway.service.impressions.close()  # writes what is queued
    shown = stack.gateway.service.log.read_impressions().to_pylist()
    assert [row["request_id"] for row in shown] == [a.request_id for a in answers]
    row, answer = shown[0], answers[0]
    assert (row["user_id"], row["user_key"]) == (2, "2")
    assert abs(row["request_time_ms"] - time.time() * 1000) < 60_000
    assert row["item_ids"] == list(answer.items.item_ids)
    assert row["positions"] == [0, 1, 2, 3, 4]
    assert row["channel_masks"] == list(answer.items.channel_masks)
    assert row["rerank_scores"] == pytest.approx(list(answer.items.scores))
    assert len(row["recall_scores"]) == 5 and len(row["rank_scores"]) == 5
    assert not any(np.isnan(row["rank_scores"]))
    assert row["degraded_stages"] == ([] if HAS_PRERANK else ["prerank"])
    assert row["prerank_scores"] == ([] if not HAS_PRERANK else row["prerank_scores"])
    assert json.loads(row["model_versions"])["rank"] == "v1"
    # Anonymous (no key) and never-seen users are served as anonymous (dense 0).
    assert [(r["user_id"], r["user_key"]) for r in shown[1:]] == [(0, ""), (0, "123456")]
    assert metric(stack, "cascade_gateway_impressions_total", {"outcome": "logged"}) == 3
    # Feedback names the impression it came from: the link training joins on.
    item = answer.items.item_ids[0]
    event = gateway_pb2.Event(user_id=2, item_id=item, type=PLAY, request_id=answer.request_id)
    with client_for(stack) as client:
        client.feedback([event])
    assert logged_events(stack)["request_id"].to_pylist() == [answer.request_id]


def test_a_huge_new_user_id_gets_a_small_dense_id_and_allocates_nothing(stack_factory, capsys):
    stack = stack_factory()
    store = stack.recall_service.state.store
    n_known = len(stack.gateway.service.ids.users)  # the dataset's users, none added yet
    code = feedback_main(
        ["--user", "99999999", "--item", "50", "--type", "play", "--target", stack.gateway.address]
    )
    assert code == 0 and "accepted 1 of 1" in capsys.readouterr().out
    (row,) = logged_events(stack).to_pylist()
    assert (row["user_id"], row["user_key"]) == (n_known + 1, "99999999")
    # Recall's store only ever sees the dense id (its online state is keyed, never sized, by it).
    assert store.history(np.array([99_999_999]))[0].tolist() == [0] * store.spec.history_length
    assert store.history(np.array([n_known + 1]))[0][0] == 50
    with client_for(stack) as client:  # the next answer knows the play
        assert 50 not in client.recommend(99_999_999, count=10).items.item_ids


def test_a_full_user_table_is_resource_exhausted_with_the_field_named(stack_factory):
    stack = stack_factory(new_user_capacity=1)
    with client_for(stack) as client:
        assert client.feedback([(10**12, 1, "play")]).accepted == 1
        with pytest.raises(grpc.RpcError) as error:
            client.feedback([(3, 2, "play"), (10**12 + 1, 1, "play")])
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "events.user_id" in field_violations(error.value)
    assert logged_events(stack)["user_key"].to_pylist() == [str(10**12)]  # all or nothing


def test_a_restarted_gateway_keeps_ids_and_recent_items_from_the_log(stack_factory):
    stack = stack_factory()
    with client_for(stack) as client:
        client.feedback([(99_999_999, 50, "play"), (77_777_777, 51, "play"), (2, 52, "play")])
    service = stack.gateway.service
    before = service.ids.users.lookup([99_999_999, 77_777_777]).tolist()
    stack.gateway.stop(0)
    service.close()
    stack.gateway = start(stack.settings)  # same settings, same log
    restarted = stack.gateway.service
    assert restarted.ids.users.lookup([99_999_999, 77_777_777]).tolist() == before
    assert restarted.online.recent(before[0]) == [50] and restarted.online.recent(2) == [52]
    with client_for(stack) as client:
        client.feedback([(66_666_666, 53, "play")])
    assert restarted.ids.users.lookup([66_666_666]).tolist() == [max(before) + 1]
    assert logged_events(stack).num_rows == 4


def test_a_late_event_does_not_become_the_newest():
    online = OnlineEvents(per_user=3)
    users, play = np.array([1, 1, 1]), ["play"] * 3
    online.record(users, np.array([10, 11, 12]), play, np.array([1_000, 3_000, 2_000]))
    assert online.recent(1) == [11, 12, 10]
    online.record(np.array([1]), np.array([9]), ["play"], np.array([500]))  # older than all
    assert online.recent(1) == [11, 12, 10]  # kept newest 3
    online.record(np.array([1]), np.array([10]), ["play"], np.array([4_000]))  # replayed later
    assert online.recent(1) == [10, 11, 12]
    online.record(np.array([1]), np.array([11]), ["play"], np.array([100]))  # an old repeat
    assert online.recent(1) == [10, 11, 12]


def test_the_stages_get_the_gateways_request_time(stack_factory):
    stack = stack_factory()  # the "data" clock: the training log's end, plus uptime
    service = stack.gateway.service
    as_of_ms = service.catalog.as_of_s * 1000
    assert as_of_ms <= service.now_ms() < as_of_ms + 600_000
    with client_for(stack) as client:
        answer = client.recommend(2, count=3)
    service.impressions.close()
    (row,) = service.log.read_impressions().to_pylist()
    assert row["request_id"] == answer.request_id
    assert as_of_ms <= row["request_time_ms"] <= service.now_ms()


def test_stage_scores_follow_the_display_order():
    candidates = common_pb2.CandidateList(item_ids=[4, 8, 15, 16], scores=[0.4, 0.8, 1.5, 1.6])
    assert stage_scores(candidates, [16, 4, 99]) == pytest.approx(
        [1.6, 0.4, float("nan")], nan_ok=True
    )
    assert stage_scores(candidates, []) == []
