"""The gateway in front of the real stage servers: the full cascade, degradation, feedback."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from cascade.candidates import channel_bit
from cascade.client import field_violations
from cascade.topology import STAGES
from cascade.v1 import common_pb2, recall_pb2, recall_pb2_grpc
from gateway.client import CascadeClient
from services.recall.tables import neighbours_of
from tests.gateway.conftest import HAS_PRERANK

pytestmark = pytest.mark.timeout(120)
# Without a prerank server the gateway degrades prerank by design (see conftest).
EXPECTED_DEGRADED = [] if HAS_PRERANK else ["prerank"]


def client_for(stack, **kwargs) -> CascadeClient:
    return CascadeClient(stack.gateway.address, timeout_s=5.0, **kwargs)


def test_a_request_runs_through_every_stage(shared_stack):
    registry = shared_stack.gateway.registry
    rank_calls = {"stage": "rank"}
    before = counter(registry, "cascade_gateway_stage_latency_seconds_count", rank_calls)
    answers_before = counter(registry, "cascade_gateway_answers_total")
    with client_for(shared_stack) as client:
        response = client.recommend(2, count=5, debug=True)
    ids = list(response.items.item_ids)
    assert len(ids) == 5 and len(set(ids)) == 5
    assert [t.stage for t in response.trace] == list(STAGES)
    assert list(response.degraded_stages) == EXPECTED_DEGRADED
    traces = {t.stage: t for t in response.trace}
    assert traces["recall"].model_version == "v1" and traces["rank"].model_version == "v1"
    assert sum(traces["recall"].channel_counts.values()) >= traces["recall"].candidates_out > 0
    assert traces["rank"].candidates_out <= 15 and traces["rerank"].candidates_out == 5
    assert traces["rerank"].candidates_in == traces["rank"].candidates_out
    assert all(t.latency_ms > 0 for t in response.trace)
    assert len(response.request_id) == 32 and int(response.request_id, 16) >= 0  # uuid4 hex
    # Deltas: other tests share this gateway.
    assert counter(registry, "cascade_gateway_stage_latency_seconds_count", rank_calls) == (
        before + 1
    )
    version = {"stage": "gateway", "model_version": "v1"}
    assert registry.get_sample_value("cascade_model_info", version) == 1
    assert counter(registry, "cascade_gateway_answers_total") == answers_before + 1


def counter(registry, name: str, labels: dict | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def test_without_debug_there_is_no_trace_and_unknown_users_get_the_cold_path(shared_stack):
    with client_for(shared_stack) as client:
        assert not client.recommend(2, count=3).trace
        cold = client.recommend(10_000_000, count=4)  # not in the catalog of users
        anonymous = client.recommend(0, count=0)  # 0 = the default (5)
    assert len(cold.items.item_ids) == 4 and list(cold.degraded_stages) == EXPECTED_DEGRADED
    assert len(anonymous.items.item_ids) == 5


@pytest.mark.parametrize("stopped", [s for s in STAGES if HAS_PRERANK or s != "prerank"])
def test_a_stopped_stage_degrades_instead_of_failing(stack_factory, stopped):
    stack = stack_factory()
    stack.stop_stage(stopped)
    with client_for(stack) as client:
        started = time.perf_counter()
        response = client.recommend(2, count=5, debug=True)
        took = time.perf_counter() - started
    assert len(response.items.item_ids) == 5 and response.degraded
    assert stopped in response.degraded_stages
    traces = {t.stage: t for t in response.trace}
    assert traces[stopped].degraded and traces[stopped].degraded_reason == "UNAVAILABLE"
    assert not any(traces[s].degraded for s in STAGES if s not in (stopped, *EXPECTED_DEGRADED))
    assert took < 2.0  # a down stage fails fast, it does not eat the budget
    if stopped == "recall":  # the popular cache stands in
        assert all(m & channel_bit("popular") for m in response.items.channel_masks)
    registry = stack.gateway.registry
    value = registry.get_sample_value(
        "cascade_gateway_degraded_total", {"stage": stopped, "reason": "UNAVAILABLE"}
    )
    assert value == 1
    assert registry.get_sample_value("cascade_gateway_answers_total") == 1
    assert registry.get_sample_value("cascade_gateway_degraded_answers_total") == 1


def test_every_stage_down_still_answers_popular_items_with_the_creator_cap(stack_factory, built):
    stack = stack_factory(max_per_creator=1)
    for name in list(stack.stages):
        stack.stop_stage(name)
    with client_for(stack) as client:
        response = client.recommend(2, count=3)
    assert list(response.degraded_stages) == list(STAGES)
    ids = np.asarray(response.items.item_ids)
    creators = built.dataset.items["creator_id"][ids - 1]
    named = creators[creators > 0]
    assert len(ids) == 3 and len(set(named.tolist())) == len(named)  # at most one per creator


def test_a_late_stage_is_cut_by_its_budget_and_the_answer_beats_the_deadline(stack_factory):
    stack = stack_factory(rank_delay_s=3.0)  # rank answers far too late
    with client_for(stack) as client:
        started = time.perf_counter()
        # A deadline error would raise: an answer at all means it beat the client's deadline.
        response = client.recommend(2, count=5, debug=True, timeout_s=1.5)
        took = time.perf_counter() - started
    assert took < 3.0 and len(response.items.item_ids) == 5  # it did not wait for rank
    traces = {t.stage: t for t in response.trace}
    assert traces["rank"].degraded_reason == "DEADLINE_EXCEEDED"
    assert not traces["rerank"].degraded  # rerank still ran, on prerank's order


def test_feedback_changes_the_next_answer(stack_factory):
    stack = stack_factory()
    user = 2
    with client_for(stack) as client:
        before = list(client.recommend(user, count=5).items.item_ids)
        played = before[0]
        store = stack.recall_service.state.store
        plays_before = store.item_counters(np.array([played]))["play"][0]
        reply = client.feedback([(user, played, "play")])
        after = list(client.recommend(user, count=5).items.item_ids)
    assert reply.accepted == 1 and not reply.rejected
    assert played not in after and after != before
    # The play reached recall's own store (history, counters) through the Record RPC ...
    assert store.history(np.array([user]))[0][0] == played
    assert store.item_counters(np.array([played]))["play"][0] == plays_before + 1
    # ... and the item-CF channel now finds the played item's neighbours for this user.
    recent = stack.gateway.service.online.recent(user)
    assert recent == [played]
    neighbours = item_cf_neighbours(stack, played)
    found = recall_item_cf(stack, user, recent)
    assert neighbours and set(neighbours) & set(found)


def item_cf_neighbours(stack, item: int) -> list[int]:
    (channel,) = [c for c in stack.recall_service.state.channels if c.name == "item_cf"]
    return [int(i) for i in neighbours_of(channel.table, item)[0]]


def recall_item_cf(stack, user: int, recent: list[int]) -> list[int]:
    stub = recall_pb2_grpc.RecallStub(grpc.insecure_channel(stack.stages["recall"].address))
    request = recall_pb2.RecallRequest(
        user=common_pb2.UserContext(user_id=user, recent_item_ids=recent), count=50
    )
    response = stub.Recall(request, timeout=5)
    bit = channel_bit("item_cf")
    return [
        i
        for i, m in zip(
            response.candidates.item_ids, response.candidates.channel_masks, strict=True
        )
        if m & bit
    ]


def test_feedback_rejects_bad_events_and_keeps_the_good_ones(stack_factory):
    stack = stack_factory()
    events = [(3, 1, "play"), (3, 99_999, "play"), (-1, 2, "like"), (3, 2, "like")]
    with client_for(stack) as client:
        reply = client.feedback(events)
        assert reply.accepted == 2
        assert [(r.index, r.reason.split(":")[0]) for r in reply.rejected] == [
            (1, "item_id"),
            (2, "user_id"),
        ]
        with pytest.raises(grpc.RpcError) as error:
            client.feedback([(3, 1, "play")] * (stack.settings.max_feedback_events + 1))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events" in field_violations(error.value)
    assert stack.gateway.service.online.recent(3) == [2, 1]


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"user_id": -1}, "user_id"),
        ({"count": 21}, "count"),
        ({"context": {"extras": {f"k{i}": "v" for i in range(17)}}}, "context.extras"),
        ({"context": {"extras": {"k": "v" * 300}}}, "context.extras"),
        ({"context": {"platform": "x" * 65}}, "context.platform"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(shared_stack, request_fields, field):
    fields = {"user_id": 2, "count": 5} | request_fields
    with client_for(shared_stack) as client:
        with pytest.raises(grpc.RpcError) as error:
            client.recommend(**fields)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error.value)
