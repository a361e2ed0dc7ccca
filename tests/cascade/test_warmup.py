"""Warm-up (cascade/warmup.py): synthetic requests through a handler, counted apart from traffic
by outcome; a handler that refuses them leaves the stage serving, cold, and says so."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from cascade.v1 import rank_pb2
from cascade.warmup import WARM_UP_ITEMS, WarmUp, candidates_request, warm_up, warmup_counter


class Handler:
    def __init__(self, abort: bool):
        self.abort, self.seen = abort, []

    def Rank(self, request: rank_pb2.RankRequest, context: grpc.ServicerContext):
        self.seen.append(request)
        if self.abort:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such user")
        return rank_pb2.RankResponse()


def counted(registry: CollectorRegistry, outcome: str) -> float:
    labels = {"stage": "rank", "rpc": "Rank", "outcome": outcome}
    return registry.get_sample_value("cascade_warmup_requests_total", labels) or 0.0


def test_each_round_goes_through_the_handler_and_is_counted():
    registry, handler = CollectorRegistry(), Handler(abort=False)
    plan = WarmUp("Rank", lambda: candidates_request(rank_pb2.RankRequest), rounds=3)
    assert warm_up("rank", handler, plan, warmup_counter(registry)) == 3
    assert counted(registry, "ok") == 3 and counted(registry, "failed") == 0
    request = handler.seen[0]
    assert list(request.candidates.item_ids) == list(WARM_UP_ITEMS) and request.count == 10
    assert len(request.candidates.scores) == len(request.candidates.channel_masks)


def test_a_refused_warm_up_is_counted_as_failed_and_never_raises(caplog):
    registry = CollectorRegistry()
    plan = WarmUp("Rank", lambda: candidates_request(rank_pb2.RankRequest))
    assert warm_up("rank", Handler(abort=True), plan, warmup_counter(registry)) == 0
    assert counted(registry, "failed") == 2 and counted(registry, "ok") == 0
    assert "warm-up Rank failed: INVALID_ARGUMENT: no such user" in caplog.text
