"""Every degradation reason at every stage, through real loopback servers: a stage that answers
late, malformed or with a failing code is replaced by its fallback, reported and counted once;
the budget running out skips the stages left (NO_BUDGET); the fallbacks never serve an item the
user just played; the breaker's short-deadline rule and its single probe on the real path."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import pytest

from cascade.candidates import channel_bit
from cascade.data.split import split_dataset
from cascade.v1 import common_pb2
from gateway.client import CascadeClient
from gateway.pipeline import STAGES, Budget
from gateway.server import start
from tests.gateway.conftest import gateway_settings, start_stages
from tests.gateway.faulty import Faulty

pytestmark = pytest.mark.timeout(120)
# The reason the gateway reports for each way a stage misbehaves.
FAULTS = {
    "late": "DEADLINE_EXCEEDED",
    "malformed": "BAD_REPLY",
    "crash": "UNKNOWN",
    "UNAVAILABLE": "UNAVAILABLE",
    "INTERNAL": "INTERNAL",
    "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED",
    "INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "FAILED_PRECONDITION": "FAILED_PRECONDITION",
}
# A generous client deadline and safety margin: the late stage waits out its share, and the
# gateway still has 1 s to answer (0.3 s was once too little for a late rerank on a 2-core
# machine running another suite beside it).
DEADLINE_S, MARGIN_S = 4.0, 1.0


@pytest.fixture(scope="module")
def real_stages(built) -> Iterator[dict]:
    """Real stage servers that only answer Recommend-path calls here (nothing records state)."""
    stages, _ = start_stages(built)
    yield stages
    for server in stages.values():
        server.stop(0)


@pytest.fixture
def gateway_with(built, real_stages):
    """A fresh gateway (own metrics, own online events, own breakers) whose `stage` target is a
    Faulty server; the other stages are the real ones."""
    started = []

    def make(faulty: Faulty, **overrides):
        faulty.start()
        stages = dict(real_stages) | {faulty.stage: faulty.server}
        settings = gateway_settings(built, stages, safety_margin_s=MARGIN_S, **overrides)
        gateway = start(settings)
        started.append((gateway, faulty))
        return gateway

    yield make
    for gateway, faulty in started:
        faulty.stop()
        gateway.stop(0)
        gateway.service.close()


def traces_of(response) -> dict:
    return {t.stage: t for t in response.trace}


def degraded_count(gateway, stage: str, reason: str) -> float:
    value = gateway.registry.get_sample_value(
        "cascade_gateway_degraded_total", {"stage": stage, "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_failing_stage_is_replaced_by_its_fallback(gateway_with, stage, fault):
    faulty = Faulty(stage, fault)
    gateway = gateway_with(faulty)
    with CascadeClient(gateway.address, timeout_s=DEADLINE_S) as client:
        response = client.recommend(2, count=5, debug=True, timeout_s=DEADLINE_S)
    reason = FAULTS[fault]
    traces = traces_of(response)
    assert faulty.calls >= 1  # the gateway did call it
    assert traces[stage].degraded and traces[stage].degraded_reason == reason
    assert list(response.degraded_stages) == [stage]
    assert all(not t.degraded for name, t in traces.items() if name != stage)
    ids = list(response.items.item_ids)
    assert len(ids) == 5 and len(set(ids)) == 5
    if stage == "recall":  # the popular cache stood in
        assert all(m & channel_bit("popular") for m in response.items.channel_masks)
    assert degraded_count(gateway, stage, reason) == 1
    answers = gateway.registry.get_sample_value("cascade_gateway_degraded_answers_total")
    assert answers == 1


def scripted_clock(runs_out_at: int, total_s: float):
    """A budget clock that stands still until its `runs_out_at`-th read (0 = the budget's
    creation, 1 = recall's share, ...), then jumps to 0.1 ms before the deadline."""
    reads = iter(range(1_000))

    def clock() -> float:
        return 0.0 if next(reads) < runs_out_at else total_s - 1e-4

    return clock


@pytest.mark.parametrize("stage", STAGES)
def test_no_budget_skips_the_stage_and_every_later_one(gateway_with, stage):
    gateway = gateway_with(Faulty("recall", "ok", items=tuple(range(1, 41))))
    cascade = gateway.service.cascade
    index = STAGES.index(stage)
    budget = Budget(1.0, gateway.service.settings.shares(), scripted_clock(index + 1, 1.0))
    user = common_pb2.UserContext(user_id=2)
    response = cascade.run(user, 5, budget, debug=True)
    reasons = [t.degraded_reason for t in response.trace]
    assert reasons == [""] * index + ["NO_BUDGET"] * (len(STAGES) - index)
    assert len(response.items.item_ids) == 5
    for skipped in STAGES[index:]:
        assert degraded_count(gateway, skipped, "NO_BUDGET") == 1


def play(client: CascadeClient, user: int, items: list[int]) -> None:
    reply = client.feedback([(user, item, "play") for item in items])
    assert reply.accepted == len(items)


def logged_items(built, user: int) -> set[int]:
    """The user's training-period items, read from the split's log by hand."""
    log = split_dataset(built.dataset).train_interactions
    return {int(i) for u, i in zip(log["user_id"], log["item_id"], strict=True) if u == user}


def test_the_popular_fallback_leaves_out_what_the_user_played(gateway_with, built):
    """Recall down: the popular cache, minus the user's plays, is what the later stages get."""
    gateway = gateway_with(Faulty("recall", "UNAVAILABLE"))
    popular = [int(i) for i in gateway.service.catalog.popular]
    played = popular[:3]
    with CascadeClient(gateway.address, timeout_s=DEADLINE_S) as client:
        play(client, 7, played)
        response = client.recommend(7, count=5, debug=True)
    traces = traces_of(response)
    assert traces["recall"].degraded_reason == "UNAVAILABLE"
    recall_count = gateway.service.settings.recall_count
    seen = set(played) | logged_items(built, 7)  # the fallbacks also drop the logged history
    expected_out = min(recall_count, len([i for i in popular if i not in seen]))
    assert traces["recall"].candidates_out == expected_out
    assert not set(played) & set(response.items.item_ids)
    # Each item's channel position is its place in the cache's order, passed on by every stage.
    order = [i for i in popular if i not in seen]
    expected = [order.index(i) + 1 for i in response.items.item_ids]
    assert list(response.items.channel_positions) == expected


def test_the_local_rerank_leaves_out_what_the_user_played(gateway_with, built, real_stages):
    """Rerank down, and a recall that (wrongly) returns the played items first: the gateway's
    own rerank must drop them and cap creators (prerank and rank do not filter plays)."""
    rerank = Faulty("rerank", "UNAVAILABLE").start()
    recalled = tuple(range(1, 31))
    recall = Faulty("recall", "ok", items=recalled)
    gateway = gateway_with(
        recall, rerank_target=rerank.address, prerank_count=40, rank_count=40, max_per_creator=2
    )
    played = [1, 2, 3]
    try:
        with CascadeClient(gateway.address, timeout_s=DEADLINE_S) as client:
            play(client, 7, played)
            response = client.recommend(7, count=8, debug=True)
    finally:
        rerank.stop()
    assert list(response.degraded_stages) == ["rerank"]
    ids = [int(i) for i in response.items.item_ids]
    assert not set(played) & set(ids)
    assert len(ids) == 8
    creators = built.dataset.items["creator_id"]  # item i is row i - 1
    per_creator: dict[int, int] = {}
    for item in ids:
        creator = int(creators[item - 1])
        per_creator[creator] = per_creator.get(creator, 0) + 1
    assert all(n <= 2 for c, n in per_creator.items() if c != 0)
    # The recall calls saw the plays as the user's recent items, newest first.
    assert list(recall.requests[-1].user.recent_item_ids) == played[::-1]


def test_every_stage_down_answers_popular_minus_plays_with_the_creator_cap(gateway_with, built):
    """The whole fallback chain against a plain-loop reference: popular order, minus plays, at
    most one item per known creator."""
    gateway = gateway_with(
        Faulty("recall", "UNAVAILABLE"),
        prerank_target="127.0.0.1:1",
        rank_target="127.0.0.1:1",
        rerank_target="127.0.0.1:1",
        max_per_creator=1,
    )
    popular = [int(i) for i in gateway.service.catalog.popular]
    played = popular[:2]
    with CascadeClient(gateway.address, timeout_s=DEADLINE_S) as client:
        play(client, 9, played)
        response = client.recommend(9, count=4)
    assert list(response.degraded_stages) == list(STAGES)
    creators = built.dataset.items["creator_id"]
    seen = set(played) | logged_items(built, 9)
    expected, taken = [], set()
    for item in popular:
        creator = int(creators[item - 1])
        if item in seen or (creator != 0 and creator in taken):
            continue
        taken.add(creator)
        expected.append(item)
    assert list(response.items.item_ids) == expected[:4]


def test_a_deadline_too_short_to_judge_the_stage_never_opens_the_breaker(gateway_with):
    """Rank answers late; with every deadline counted as 'too short', three timeouts in a row
    leave the breaker closed; counted normally, the first one opens it."""
    gateway = gateway_with(Faulty("rank", "late"), breaker_failures=1, breaker_cooldown_s=60.0)
    cascade = gateway.service.cascade
    cascade.funnel = dataclasses.replace(cascade.funnel, breaker_min_timeout_s=100.0)
    with CascadeClient(gateway.address, timeout_s=DEADLINE_S) as client:
        for _ in range(3):
            traces = traces_of(client.recommend(2, count=5, debug=True, timeout_s=1.0))
            assert traces["rank"].degraded_reason == "DEADLINE_EXCEEDED"
        assert cascade.pools["rank"].replicas[0].breaker.failures == 0
        cascade.funnel = dataclasses.replace(cascade.funnel, breaker_min_timeout_s=0.0)
        reasons = [
            traces_of(client.recommend(2, count=5, debug=True, timeout_s=1.0))["rank"]
            for _ in range(2)
        ]
    assert [t.degraded_reason for t in reasons] == ["DEADLINE_EXCEEDED", "CIRCUIT_OPEN"]


def test_a_tiny_client_deadline_gets_an_answer_or_deadline_exceeded(gateway_with):
    gateway = gateway_with(Faulty("recall", "ok", items=tuple(range(1, 41))))
    with CascadeClient(gateway.address, timeout_s=DEADLINE_S) as client:
        client.recommend(2, count=5)  # connected
        for timeout_s in (0.001, 0.003, 0.01, 0.03):
            try:
                response = client.recommend(2, count=5, timeout_s=timeout_s)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
            else:  # a full answer, or a degraded one (the creator cap may leave fewer)
                assert 0 < len(response.items.item_ids) <= 5
    unknown = gateway.registry.get_sample_value(
        "cascade_rpc_requests_total",
        {
            "stage": "gateway",
            "rpc": "cascade.v1.Gateway/Recommend",
            "code": "UNKNOWN",
            "traffic": "live",
        },
    )
    assert unknown is None
