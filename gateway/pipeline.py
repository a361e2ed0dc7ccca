"""The cascade as the gateway runs it: recall -> prerank -> rank -> rerank under one time budget.

Each stage gets a share of what is left of the request's budget as its call deadline, so time a
fast stage did not use flows to the later ones. A stage that is down, late, failing or answers
nonsense is replaced by its fallback (the gateway degrades instead of failing): recall -> the
popular cache; prerank -> recall's order, truncated; rank -> prerank's order; rerank -> rank's
order with the creator cap and the seen filter (the request's recent items and the user's logged
history) applied here. Every fallback is reported and counted. A replica that keeps failing is
ejected (its own Breaker, gateway/replicas.py) instead of costing every request its budget; with
every replica of a stage ejected, the stage falls back at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cascade import topology
from cascade.candidates import CHANNELS, Candidates, channel_bit, from_proto, to_proto
from cascade.telemetry import LATENCY_BUCKETS
from cascade.traffic_pool import PoolSettings
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
from gateway.pool import Pool, PoolCounters, PoolMetrics


class StagePool(Protocol):
    """A stage's replicas as the funnel uses them (gateway/transport.py: gRPC or in process):
    `pick` one (None: none may be called), call `replica.stub(stub_class).Method(request,
    timeout=...)`, then `record` the outcome."""

    def pick(self, exclude: Any = None) -> Any: ...

    def record(self, replica: Any, ok: bool | None) -> None: ...


STAGES = topology.STAGES  # the order a request crosses them
# Each stage's stub and its one RPC, called on the replica a ReplicaPool picks.
STUBS = {
    "recall": (recall_pb2_grpc.RecallStub, "Recall"),
    "prerank": (prerank_pb2_grpc.PrerankStub, "Prerank"),
    "rank": (rank_pb2_grpc.RankStub, "Rank"),
    "rerank": (rerank_pb2_grpc.RerankStub, "Rerank"),
}
# An arm's rerank_method as the RerankRequest's enum ("" = the service's configured one).
RERANK_METHODS = {
    "none": rerank_pb2.DIVERSITY_METHOD_NONE,
    "mmr": rerank_pb2.DIVERSITY_METHOD_MMR,
    "dpp": rerank_pb2.DIVERSITY_METHOD_DPP,
}
MIN_STAGE_S = 0.001  # less than this for a stage: skip the call, it could not answer in time
POPULAR_MASK = channel_bit("popular")


class StageReply(Protocol):
    """What every stage's reply message carries (RecallResponse, ..., RerankResponse)."""

    @property
    def candidates(self) -> common_pb2.CandidateList: ...


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
            "NO_BUDGET, BAD_REPLY or CIRCUIT_OPEN).",
            ["stage", "reason"],
            registry=registry,
        )
        self.answers = Counter(
            "cascade_gateway_answers", "Recommend answers the cascade produced.", registry=registry
        )
        # Labelled by experiment arm: names come only from the `arms` setting ("none" without
        # arms), so the label's cardinality is bounded by the configuration.
        self.arm_answers = Counter(
            "cascade_gateway_arm_answers",
            "Recommend answers by the experiment arm that served them.",
            ["arm"],
            registry=registry,
        )
        self.arm_latency = Histogram(
            "cascade_gateway_arm_latency_seconds",
            "Time Recommend took inside the gateway, by experiment arm.",
            ["arm"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.degraded_answers = Counter(
            "cascade_gateway_degraded_answers",
            "Recommend answers with at least one stage replaced by its fallback.",
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
        self.impressions = Counter(
            "cascade_gateway_impressions",
            "Recommend answers by what became of their impression record: logged, or dropped "
            "(queue_full: the writer fell behind; log_error: the event log refused the write).",
            ["outcome"],
            registry=registry,
        )
        # A process outside the gateway (the simulation's daily retrain) waits for 0 before it
        # reads the log: every answer it received is then logged or counted as dropped.
        self.impressions_pending = Gauge(
            "cascade_gateway_impressions_pending",
            "Recommend answers queued for the impression writer, not yet logged or dropped.",
            registry=registry,
        )
        self.event_log_failures = Counter(
            "cascade_gateway_event_log_failures",
            "Feedback calls failed UNAVAILABLE because the event log could not store them.",
            registry=registry,
        )
        self.pool = PoolMetrics(registry)
        self._children: dict[tuple, object] = {}

    def labelled(self, metric, *labels: str):
        """`metric.labels(*labels)`, resolved once: labels() takes a lock and builds a key on
        every call (`python -m bench.gateway_path`, metric_labels_cpu)."""
        key = (id(metric), labels)  # the metrics live as long as this object
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


@dataclass
class Served:
    """What each stage answered for one request, for its impression record."""

    lists: dict[str, common_pb2.CandidateList] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # stage -> model version
    pool_young: int = -1  # young uploads the traffic pool could offer; -1 = pool off


class Budget:
    """What is left of one request's time, split across the stages still to run. `clock` is the
    time source (seconds); tests pass their own to check the split exactly."""

    def __init__(
        self,
        total_s: float,
        shares: dict[str, float],
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.clock = clock
        self.deadline = clock() + max(total_s, 0.0)
        self.shares = shares

    def left(self) -> float:
        return self.deadline - self.clock()

    def for_stage(self, stage: str) -> float:
        rest = STAGES[STAGES.index(stage) :]
        return self.left() * self.shares[stage] / sum(self.shares[s] for s in rest)


class Breaker:
    """Stops calling a stage that keeps failing (degrade, and degrade fast). After `threshold`
    failures in a row it opens: calls fall back at once (reason CIRCUIT_OPEN) instead of each
    waiting out its budget on a paused or dead stage. After `cooldown_s` one call goes through as
    a probe: success closes the breaker, failure opens it for another cooldown. `clock` is the
    time source (seconds); tests pass their own to step through the cooldown exactly."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.threshold, self.cooldown_s, self.clock = threshold, cooldown_s, clock
        self.failures = 0
        self.open_until = 0.0
        self.prober: int | None = None  # the thread whose call is the probe, if one is out
        self.lock = threading.Lock()

    def allow(self) -> bool:
        """May this call go to the stage? Every True must be followed by `record`, from the
        same thread (a synchronous call: the probe is known by its thread)."""
        with self.lock:
            if not self.threshold or self.failures < self.threshold:
                return True
            if self.prober is not None or self.clock() < self.open_until:
                return False
            self.prober = threading.get_ident()
            return True

    @property
    def probing(self) -> bool:
        return self.prober is not None

    def record(self, ok: bool | None) -> None:
        """The call's outcome; None when it says nothing about the stage's health."""
        with self.lock:
            # Only the probe ends the probe: a call let through before the breaker opened and
            # answering during the probe must not let a second probe in.
            if self.prober == threading.get_ident():
                self.prober = None
            if ok is None:
                return
            self.failures = 0 if ok else self.failures + 1
            if self.threshold and self.failures >= self.threshold:
                self.open_until = self.clock() + self.cooldown_s


@dataclass(frozen=True)
class Funnel:
    recall_count: int  # candidates asked of recall
    prerank_count: int  # kept by prerank
    rank_count: int  # kept by rank
    max_per_creator: int  # creator cap of the local rerank fallback; 0 = none
    breaker_failures: int = 3  # failures in a row that eject a replica; 0 = never
    breaker_cooldown_s: float = 0.5  # how long an ejected replica waits for its health probe
    # A deadline overrun counts against a stage only when it had this long: a client that set a
    # tiny deadline must not open the breaker for everyone.
    breaker_min_timeout_s: float = 0.02
    # An experiment arm's changes (gateway/arms.py): stages not called (their fallback answers,
    # not counted as degraded), and the reranker's method and trade-off ("" / None: its own).
    skip: tuple[str, ...] = ()
    rerank_method: str = ""
    rerank_trade_off: float | None = None
    # Recall's channel quotas for the arm, (name, share) pairs sent as RecallRequest.channel_quotas.
    channel_quotas: tuple[tuple[str, float], ...] = ()
    # The traffic pool for young uploads (gateway/pool.py, cascade/traffic_pool.py); 0 slots:
    # off (the gateway's settings turn it on).
    pool: PoolSettings = field(default_factory=lambda: PoolSettings(slots=0))


class Cascade:
    """The four stages' replica pools plus the local fallbacks; one `run` per Recommend."""

    def __init__(
        self,
        pools: dict[str, StagePool],
        funnel: Funnel,
        popular: np.ndarray,
        creators: np.ndarray,
        metrics: GatewayMetrics,
        consumed: Callable[[int], np.ndarray] | None = None,
        uploaded: np.ndarray | None = None,
        pool: Pool | None = None,
    ):
        self.pools = pools
        self.funnel = funnel
        self.popular = popular  # (n,) item ids, most popular first
        self.creators = creators  # (n_items + 1,) creator id by item id, 0 = unknown
        # (n_items + 1,) upload time (s) by item id, 0 = unknown: the pool's young uploads.
        self.uploaded = np.zeros(len(creators), np.int64) if uploaded is None else uploaded
        # Its counters: the embedded ones, unless the caller passes the shared store's.
        self.pool = Pool(PoolCounters().counts) if pool is None else pool
        self.metrics = metrics
        # The user's logged items, for the fallbacks' seen filter (the stages read their store).
        self.consumed = consumed or (lambda user_id: np.empty(0, dtype=np.int64))

    def run(
        self,
        user: common_pb2.UserContext,
        count: int,
        budget: Budget,
        debug: bool,
        served: Served | None = None,
        seen_of: Callable[[], np.ndarray] | None = None,
        funnel: Funnel | None = None,
        request_id: str = "",
        metadata: tuple[tuple[str, str], ...] = (),
        stop_after: str = STAGES[-1],
        explain: bool = False,
    ) -> gateway_pb2.RecommendResponse:
        """One Recommend; `served`, when given, receives each stage's list and model version.
        The local fallbacks drop what the user has seen: the request's recent ids, the user's
        logged items, and `seen_of()` (read only when a fallback runs, e.g. the shared store).
        `funnel` (a smaller one under load, gateway/admission.py) replaces the configured cuts
        for this call. With the funnel's pool on, `request_id` seeds the pool's draws; the
        response's explored_positions say which slots the pool filled. `metadata` goes with
        every stage call (the shadow arm's marks its calls as shadow traffic). `stop_after`
        names the last stage called: the page is that stage's list (the evaluation's per-stage
        cuts; the pool runs only on a whole funnel). `explain` asks rerank why it placed each
        item and puts every stage's list in the response's explanation."""
        if stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
        response = gateway_pb2.RecommendResponse()
        funnel = self.funnel if funnel is None else funnel
        served = Served() if served is None else served
        cached: list[np.ndarray] = []

        def seen() -> np.ndarray:
            if not cached:
                recent = np.asarray(user.recent_item_ids, dtype=np.int64)
                if user.user_id:
                    recent = np.concatenate([recent, self.consumed(user.user_id)])
                cached.append(recent if seen_of is None else np.union1d(recent, seen_of()))
            return cached[0]

        def stage(name, request, fallback, candidates_in):
            if name in funnel.skip:  # the arm's choice: no scores of this stage to log
                return _skipped(response, name, fallback, candidates_in)
            out = self._stage(response, name, request, fallback, candidates_in, budget, metadata)
            served.lists[name] = out
            return out

        # Lists pass from one stage's reply to the next request as messages (a C++ copy): the
        # gateway decodes them into arrays only when a fallback needs them.
        candidates: common_pb2.CandidateList | None = None
        for name in STAGES[: STAGES.index(stop_after) + 1]:
            request, fallback = self._request(name, user, count, funnel, candidates, seen)
            if explain and isinstance(request, rerank_pb2.RerankRequest):
                request.debug = True
            candidates = stage(name, request, fallback, candidates)
        assert candidates is not None  # STAGES is never empty
        page = from_proto(candidates).take(slice(0, count))
        if stop_after == STAGES[-1] and funnel.pool.on:
            page, served.pool_young = self.pool.fill(
                response,
                page,
                served.lists,
                user,
                seen(),
                funnel.pool,
                count,
                self.uploaded,
                request_id,
                self.creators,
                funnel.max_per_creator,
            )
        to_proto(*page, out=response.items)
        self.metrics.answers.inc()
        if response.degraded:
            self.metrics.degraded_answers.inc()
        served.versions = {t.stage: t.model_version for t in response.trace if t.model_version}
        if explain:
            for name, answered in served.lists.items():
                response.explanation.stages.add(stage=name, candidates=answered)
        if not debug:
            del response.trace[:]
        return response

    def _request(
        self,
        name: str,
        user: common_pb2.UserContext,
        count: int,
        funnel: Funnel,
        candidates: common_pb2.CandidateList | None,
        seen: Callable[[], np.ndarray],
    ) -> tuple[object, Callable[[], Candidates]]:
        """Stage `name`'s request for the list `candidates` the previous stage answered, and
        the fallback that answers in its place."""
        if name == "recall":
            recall_request = recall_pb2.RecallRequest(
                user=user, count=funnel.recall_count, channel_quotas=dict(funnel.channel_quotas)
            )
            return recall_request, lambda: self._popular(seen())
        assert candidates is not None
        if name == "prerank":
            prerank_request = prerank_pb2.PrerankRequest(
                user=user, count=funnel.prerank_count, candidates=candidates
            )
            return prerank_request, lambda: from_proto(candidates).take(
                slice(0, funnel.prerank_count)
            )
        if name == "rank":
            rank_request = rank_pb2.RankRequest(
                user=user, count=funnel.rank_count, candidates=candidates
            )
            return rank_request, lambda: from_proto(candidates).take(slice(0, funnel.rank_count))
        rerank_request = rerank_pb2.RerankRequest(
            user=user,
            count=count,
            candidates=candidates,
            method=RERANK_METHODS.get(
                funnel.rerank_method, rerank_pb2.DIVERSITY_METHOD_UNSPECIFIED
            ),
            trade_off=funnel.rerank_trade_off,
        )
        return rerank_request, lambda: self._local_rerank(from_proto(candidates), seen(), count)

    def _stage(
        self,
        response: gateway_pb2.RecommendResponse,
        name: str,
        request,
        fallback: Callable[[], Candidates],
        candidates_in: common_pb2.CandidateList | None,
        budget: Budget,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> common_pb2.CandidateList:
        """Calls one stage within its share of the budget; on any failure, its fallback."""
        started = time.perf_counter()
        timeout = budget.for_stage(name)
        if timeout < MIN_STAGE_S:
            reply, reason = None, "NO_BUDGET"
        else:
            reply, reason = self._call(name, request, budget, timeout, metadata)
        candidates = to_proto(*fallback()) if reason or reply is None else reply.candidates
        latency = time.perf_counter() - started
        self.metrics.labelled(self.metrics.stage_latency, name).observe(latency)
        trace = response.trace.add(
            stage=name,
            latency_ms=latency * 1000,
            candidates_out=len(candidates.item_ids),
            candidates_in=0 if candidates_in is None else len(candidates_in.item_ids),
        )
        if reason:
            self.metrics.degraded.labels(name, reason).inc()
            response.degraded = True
            response.degraded_stages.append(name)
            trace.degraded, trace.degraded_reason = True, reason
        else:
            trace.model_version = getattr(reply, "model_version", "")
            if isinstance(reply, rerank_pb2.RerankResponse) and reply.reasons:  # explained
                response.explanation.rerank_reasons[:] = reply.reasons
            for report in getattr(reply, "channels", ()):
                if report.kept:
                    trace.channel_counts[CHANNELS.get(report.channel, "unknown")] = report.kept
        return candidates

    def _call(
        self,
        name: str,
        request,
        budget: Budget,
        timeout: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> tuple[StageReply | None, str]:
        """The stage's reply from one of its replicas, or None and the reason it has none
        (CIRCUIT_OPEN: every replica is ejected). A replica that refuses at once (UNAVAILABLE:
        down, draining) leaves the rest of the stage's budget to one other replica."""
        pool, (stub_class, method) = self.pools[name], STUBS[name]
        replica, reply, reason = pool.pick(), None, "CIRCUIT_OPEN"
        for attempt in range(2):
            if replica is None:
                break
            if attempt:  # the retry gets what is left of the stage's share
                timeout = budget.for_stage(name)
            try:
                call = getattr(replica.stub(stub_class), method)
                reply = call(request, timeout=timeout, metadata=metadata or None)
                reason = "" if _well_formed(reply.candidates) else "BAD_REPLY"
            except grpc.RpcError as error:
                reply = None
                reason = error.code().name if isinstance(error, grpc.Call) else "UNAVAILABLE"
            short = reason == "DEADLINE_EXCEEDED" and timeout < self.funnel.breaker_min_timeout_s
            pool.record(replica, None if short else not reason)
            if reason != "UNAVAILABLE" or budget.for_stage(name) < MIN_STAGE_S:
                break
            replica = pool.pick(exclude=replica)
        return reply, reason

    def _popular(self, seen: np.ndarray) -> Candidates:
        """Recall's fallback: the popular cache minus what the user consumed."""
        ids = self.popular[~np.isin(self.popular, seen)][: self.funnel.recall_count]
        scores = np.linspace(1.0, 0.0, len(ids), dtype=np.float32)  # the cache's order
        masks = np.full(len(ids), POPULAR_MASK, dtype=np.uint32)
        positions = np.arange(1, len(ids) + 1, dtype=np.uint32)  # the popular channel's own order
        return Candidates(ids, scores, masks, positions)

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


def _skipped(
    response: gateway_pb2.RecommendResponse, name: str, fallback, candidates_in
) -> common_pb2.CandidateList:
    """A stage the arm skips: its fallback's list, traced as SKIPPED (the answer is as the arm
    asked, so neither degraded nor counted as a fallback)."""
    candidates = to_proto(*fallback())
    response.trace.add(
        stage=name,
        candidates_out=len(candidates.item_ids),
        degraded=True,
        degraded_reason="SKIPPED",
        candidates_in=len(candidates_in.item_ids),
    )
    return candidates


def _well_formed(candidates: common_pb2.CandidateList) -> bool:
    """A reply's arrays agree in length (the next stage would refuse the list otherwise)."""
    n = len(candidates.item_ids)
    return all(
        len(values) in (0, n)
        for values in (candidates.scores, candidates.channel_masks, candidates.channel_positions)
    )
