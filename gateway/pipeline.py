"""The cascade as the gateway runs it: recall -> prerank -> rank -> rerank under one time budget.

Each stage gets a share of what is left of the request's budget as its call deadline, so time a
fast stage did not use flows to the later ones. A stage that is down, late, failing or answers
nonsense is replaced by its fallback (DESIGN: degrade instead of failing): recall -> the popular
cache; prerank -> recall's order, truncated; rank -> prerank's order; rerank -> rank's order with
the creator cap and the seen filter applied here. Every fallback is reported and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from cascade.candidates import CHANNELS, Candidates, InvalidField, channel_bit, from_proto, to_proto
from cascade.telemetry import LATENCY_BUCKETS
from cascade.v1 import (
    common_pb2,
    gateway_pb2,
    prerank_pb2,
    prerank_pb2_grpc,
    rank_pb2,
    rank_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
)

STAGES = ("recall", "prerank", "rank", "rerank")
MIN_STAGE_S = 0.001  # less than this for a stage: skip the call, it could not answer in time
POPULAR_MASK = channel_bit("popular")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.stage_latency = Histogram(
            "cascade_gateway_stage_latency_seconds",
            "Time a stage call took as the gateway saw it (network included), fallbacks too.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.degraded = Counter(
            "cascade_gateway_degraded",
            "Stage answers replaced by a fallback, by stage and reason (a gRPC code, "
            "NO_BUDGET or BAD_REPLY).",
            ["stage", "reason"],
            registry=registry,
        )
        self.feedback = Counter(
            "cascade_gateway_feedback_events",
            "Feedback events by outcome (accepted, rejected).",
            ["outcome"],
            registry=registry,
        )
        self.record_failures = Counter(
            "cascade_gateway_record_failures",
            "Feedback batches recall's Record did not take (the gateway's own record holds them).",
            registry=registry,
        )


class Budget:
    """What is left of one request's time, split across the stages still to run."""

    def __init__(self, total_s: float, shares: dict[str, float]):
        self.deadline = time.perf_counter() + max(total_s, 0.0)
        self.shares = shares

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def for_stage(self, stage: str) -> float:
        rest = STAGES[STAGES.index(stage) :]
        return self.left() * self.shares[stage] / sum(self.shares[s] for s in rest)


@dataclass(frozen=True)
class Funnel:
    recall_count: int  # candidates asked of recall
    prerank_count: int  # kept by prerank
    rank_count: int  # kept by rank
    max_per_creator: int  # creator cap of the local rerank fallback; 0 = none


class Cascade:
    """Stubs to the four stages plus the local fallbacks; one `run` per Recommend."""

    def __init__(
        self,
        channels: dict[str, grpc.Channel],
        funnel: Funnel,
        popular: np.ndarray,
        creators: np.ndarray,
        metrics: GatewayMetrics,
    ):
        self.recall = recall_pb2_grpc.RecallStub(channels["recall"])
        self.prerank = prerank_pb2_grpc.PrerankStub(channels["prerank"])
        self.rank = rank_pb2_grpc.RankStub(channels["rank"])
        self.rerank = rerank_pb2_grpc.RerankStub(channels["rerank"])
        self.funnel = funnel
        self.popular = popular  # (n,) item ids, most popular first
        self.creators = creators  # (n_items + 1,) creator id by item id, 0 = unknown
        self.metrics = metrics

    def run(
        self, user: common_pb2.UserContext, count: int, budget: Budget, debug: bool
    ) -> gateway_pb2.RecommendResponse:
        response = gateway_pb2.RecommendResponse()
        funnel = self.funnel
        seen = np.asarray(user.recent_item_ids, dtype=np.int64)

        def stage(name, call, request, fallback, candidates_in):
            return self._stage(response, name, call, request, fallback, candidates_in, budget)

        recall_request = recall_pb2.RecallRequest(user=user, count=funnel.recall_count)
        candidates = stage(
            "recall", self.recall.Recall, recall_request, lambda: self._popular(seen), 0
        )
        request = prerank_pb2.PrerankRequest(user=user, count=funnel.prerank_count)
        candidates = stage(
            "prerank", self.prerank.Prerank, _with(request, candidates),
            lambda c=candidates: c.take(slice(0, funnel.prerank_count)), candidates,
        )  # fmt: skip
        request = rank_pb2.RankRequest(user=user, count=funnel.rank_count)
        candidates = stage(
            "rank", self.rank.Rank, _with(request, candidates),
            lambda c=candidates: c.take(slice(0, funnel.rank_count)), candidates,
        )  # fmt: skip
        request = rerank_pb2.RerankRequest(user=user, count=count, debug=False)
        candidates = stage(
            "rerank", self.rerank.Rerank, _with(request, candidates),
            lambda c=candidates: self._local_rerank(c, seen, count), candidates,
        )  # fmt: skip
        to_proto(*candidates.take(slice(0, count)), out=response.items)
        if not debug:
            del response.trace[:]
        return response

    def _stage(
        self,
        response: gateway_pb2.RecommendResponse,
        name: str,
        call: Callable,
        request,
        fallback: Callable[[], Candidates],
        candidates_in: Candidates | int,
        budget: Budget,
    ) -> Candidates:
        """Calls one stage within its share of the budget; on any failure, its fallback."""
        started = time.perf_counter()
        timeout = budget.for_stage(name)
        reply, reason = None, "NO_BUDGET"
        if timeout >= MIN_STAGE_S:
            try:
                reply = call(request, timeout=timeout)
                reason = ""
            except grpc.RpcError as error:
                reason = error.code().name if isinstance(error, grpc.Call) else "UNAVAILABLE"
        candidates = None
        if reply is not None:
            try:
                candidates = from_proto(reply.candidates)
            except InvalidField:
                reason = "BAD_REPLY"
        if candidates is None:
            candidates = fallback()
        latency = time.perf_counter() - started
        self.metrics.stage_latency.labels(name).observe(latency)
        trace = response.trace.add(
            stage=name, latency_ms=latency * 1000, candidates_out=len(candidates.item_ids),
            candidates_in=candidates_in if isinstance(candidates_in, int)
            else len(candidates_in.item_ids),
        )  # fmt: skip
        if reason:
            self.metrics.degraded.labels(name, reason).inc()
            response.degraded = True
            response.degraded_stages.append(name)
            trace.degraded, trace.degraded_reason = True, reason
        elif reply is not None:
            trace.model_version = getattr(reply, "model_version", "")
            for report in getattr(reply, "channels", ()):
                if report.kept:
                    trace.channel_counts[CHANNELS.get(report.channel, "unknown")] = report.kept
        return candidates

    def _popular(self, seen: np.ndarray) -> Candidates:
        """Recall's fallback: the popular cache minus what the user just consumed."""
        ids = self.popular[~np.isin(self.popular, seen)][: self.funnel.recall_count]
        scores = np.linspace(1.0, 0.0, len(ids), dtype=np.float32)  # the cache's order
        return Candidates(ids, scores, np.full(len(ids), POPULAR_MASK, dtype=np.uint32))

    def _local_rerank(self, ranked: Candidates, seen: np.ndarray, count: int) -> Candidates:
        """Rerank's fallback: rank's order minus seen items, at most max_per_creator per creator
        (unknown creator 0 is never capped), as the rerank service's rules do."""
        ranked = ranked.take(~np.isin(ranked.item_ids, seen))
        cap = self.funnel.max_per_creator
        if cap:
            ids = ranked.item_ids
            inside = (ids > 0) & (ids < len(self.creators))
            creator = np.where(inside, self.creators[np.where(inside, ids, 0)], 0)
            order = np.argsort(creator, kind="stable")  # groups creators, keeps rank order
            sorted_creator = creator[order]
            starts = np.flatnonzero(np.r_[True, sorted_creator[1:] != sorted_creator[:-1]])
            group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            occurrence = np.empty(len(ids), dtype=np.int64)
            occurrence[order] = np.arange(len(order)) - group_start
            ranked = ranked.take((creator == 0) | (occurrence < cap))
        return ranked.take(slice(0, count))


def _with(request, candidates: Candidates):
    to_proto(*candidates, out=request.candidates)
    return request
