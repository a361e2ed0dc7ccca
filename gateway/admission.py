"""Admission control at the gateway: who gets in, how big a funnel they get, how refusals read.

An interceptor decides on the server's polling thread, before a call waits for a worker thread:
over the concurrency limit (gateway/limits.py) the call is refused at once with RESOURCE_EXHAUSTED
and trailing metadata `grpc-retry-pushback-ms` (gRFC A6: milliseconds to wait before one retry; a
negative value: do not retry). The refusal is answered right there, on arrival, without reading
the request or handing it to any thread (cascade/guard.py); an admitted call that still waited
past CoDel's bound is refused too. Admitted calls feed their latency back into the limit; every
arrival tells the quality factor that shrinks the funnel whether it met the gateway's own queueing
(the limit nearly full, or a standing queue), never latency alone.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field, replace

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cascade.guard import PUSHBACK_KEY, refusal_handler, refuse_with_pushback
from cascade.telemetry import LATENCY_BUCKETS
from cascade.v1 import gateway_pb2
from gateway.limits import (
    Clock,
    GradientLimit,
    LimitSettings,
    QualityFactor,
    QualitySettings,
    QueueSettings,
    QueueShedder,
)

# Offline evaluation only lowers quality: a caller may ask for a smaller funnel, never a larger.
QUALITY_KEY = "cascade-quality-factor"
RECOMMEND = "/cascade.v1.Gateway/Recommend"


@dataclass(frozen=True)
class AdmissionSettings:
    enabled: bool = True
    limit: LimitSettings = field(default_factory=LimitSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    min_pushback_ms: int = 10
    # When more than this share of the last second's calls was refused, retries would only add
    # load: the hint says "do not retry" (-1).
    no_retry_share: float = 0.5
    # A slot whose call never started (its client cancelled it in the queue) is reclaimed after
    # this; an admitted call starts within milliseconds, a late one just runs without a slot.
    stale_s: float = 1.0


class AdmissionMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.refused = Counter(
            "cascade_gateway_refused",
            "Recommend calls refused by admission control, by reason (LIMIT, QUEUE).",
            ["reason"],
            registry=registry,
        )
        self.refusal_latency = Histogram(
            "cascade_gateway_refusal_latency_seconds",
            "From the admission decision to the refusal sent (the server's share of a refusal).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.limit = Gauge(
            "cascade_gateway_concurrency_limit",
            "The adaptive concurrency limit (Recommend calls at once).",
            registry=registry,
        )
        self.in_flight = Gauge(
            "cascade_gateway_in_flight", "Recommend calls admitted and running.", registry=registry
        )
        self.quality = Gauge(
            "cascade_gateway_quality_factor",
            "The funnel's size factor q from load (1 = full funnel).",
            registry=registry,
        )
        self.shrunk = Counter(
            "cascade_gateway_shrunk_answers",
            "Recommend answers served with a smaller funnel, by reason (LOAD, TIME_LEFT).",
            ["reason"],
            registry=registry,
        )


class Admission(grpc.ServerInterceptor):
    """The gateway's admission interceptor; `quality` also serves GatewayService's funnel."""

    def __init__(
        self,
        settings: AdmissionSettings,
        registry: CollectorRegistry,
        clock: Clock = time.monotonic,
        methods: tuple[str, ...] = (RECOMMEND,),
    ):
        self.settings, self.clock, self.methods = settings, clock, frozenset(methods)
        self.limiter = GradientLimit(settings.limit, clock)
        self.queue = QueueShedder(settings.queue, clock)
        self.quality = QualityFactor(settings.quality, clock)
        self.metrics = AdmissionMetrics(registry)
        self.metrics.limit.set_function(lambda: self.limiter.limit)
        self.metrics.in_flight.set_function(lambda: self.limiter.in_flight)
        self.metrics.quality.set_function(lambda: self.quality.q)
        self._pending: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        # Decisions of this second and the one before: [admitted, refused] each (O(1) per call).
        self._second, self._now_counts, self._last_counts = 0, [0, 0], [0, 0]

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if (
            not self.settings.enabled
            or handler is None
            or handler.unary_unary is None
            or handler_call_details.method not in self.methods
        ):
            return handler
        now = self.clock()
        self._reclaim(now)
        pressed = self.queue.overloaded or self.quality.pressed(
            self.limiter.in_flight, self.limiter.limit
        )
        admitted = self.limiter.try_acquire()
        self.quality.observe(pressed or not admitted)
        self._count(now, admitted)
        if not admitted:
            return refusal_handler(handler, lambda context: self._refuse_limit(now, context))
        token = next(self._ids)
        with self._lock:
            self._pending[token] = now
        return handler._replace(
            unary_unary=self._admitted(handler.unary_unary, token, now),
            request_deserializer=self._deserializer(handler.request_deserializer, token),
        )

    def _deserializer(self, deserialize, token: int):
        """A request that does not parse never reaches the handler: its slot goes back here."""
        if deserialize is None:
            return None

        def parse(data: bytes):
            try:
                return deserialize(data)
            except Exception:
                self._give_back(token)
                raise

        return parse

    def _give_back(self, token: int) -> None:
        with self._lock:
            mine = self._pending.pop(token, None) is not None
        if mine:
            self.limiter.release(None)

    def _admitted(self, behavior, token: int, admitted_at: float):
        def run(request, context: grpc.ServicerContext):
            with self._lock:
                mine = self._pending.pop(token, None) is not None
            if not mine:  # reclaimed as stale: its slot is gone, serve it without one
                return behavior(request, context)
            started = self.clock()
            if self.queue.shed(started - admitted_at):
                self.limiter.release(None)
                self.metrics.refused.labels("QUEUE").inc()
                _refuse(context, "QUEUE", self.pushback_ms())
            ok = False
            try:
                response = behavior(request, context)
                ok = True
                return response
            finally:
                latency = self.clock() - admitted_at
                remaining = context.time_remaining()
                # An answer past the deadline is one the client never sees: a drop.
                dropped = remaining is not None and remaining <= 0
                self.limiter.release(latency if ok and not dropped else None, dropped)

        return run

    def _refuse_limit(self, decided_at: float, context: grpc.ServicerContext) -> None:
        self.metrics.refused.labels("LIMIT").inc()
        pushback = self.pushback_ms()
        self.metrics.refusal_latency.observe(self.clock() - decided_at)
        _refuse(context, "LIMIT", pushback)

    def _count(self, now: float, admitted: bool) -> None:
        second = int(now)
        if second != self._second:
            last = self._now_counts if second == self._second + 1 else [0, 0]
            self._second, self._now_counts, self._last_counts = second, [0, 0], last
        self._now_counts[0 if admitted else 1] += 1

    def pushback_ms(self) -> int:
        """The retry hint: about the time for a slot to free up, or -1 when most calls of the
        last second or two were refused (a retry would be refused too and only add load)."""
        refused = self._now_counts[1] + self._last_counts[1]
        total = refused + self._now_counts[0] + self._last_counts[0]
        if total and refused > self.settings.no_retry_share * total:
            return -1
        wait_ms = 2e3 * (self.limiter.short_rtt or self.limiter.long_rtt)
        return max(self.settings.min_pushback_ms, round(wait_ms))

    def _reclaim(self, now: float) -> None:
        """Slots of calls that never started (their client cancelled while queued) go back."""
        with self._lock:
            while self._pending:
                token, at = next(iter(self._pending.items()))
                if now - at < self.settings.stale_s:
                    break
                del self._pending[token]
                self.limiter.release(None)

    def funnel_factor(self, time_left_s: float, metadata) -> tuple[float, str]:
        """This call's quality factor and its reason ("" at full quality); a caller's
        cascade-quality-factor header may lower it (offline evaluation of each level)."""
        q, reason = self.quality.for_call(time_left_s)
        for key, value in metadata or ():
            if key == QUALITY_KEY:
                try:
                    asked = min(1.0, max(self.settings.quality.q_min, float(value)))
                except ValueError:
                    continue
                if asked < q:
                    q, reason = asked, "REQUESTED"
        return q, reason

    def close(self) -> None:
        """Nothing to release: refusals run on gRPC's polling thread."""


def _refuse(context: grpc.ServicerContext, reason: str, pushback_ms: int) -> None:
    refuse_with_pushback(
        context,
        pushback_ms,
        f"gateway overloaded ({reason}); retry after {PUSHBACK_KEY} ms"
        if pushback_ms >= 0
        else f"gateway overloaded ({reason}); do not retry now",
    )


def shrink(funnel, q: float, count: int):
    """The funnel scaled by q, never below what fills a page once the seen items and the creator
    cap are filtered out (rank 2x the page, recall 4x), never above the configured cuts."""
    if q >= 1.0:
        return funnel
    rank = min(funnel.rank_count, max(2 * count, round(funnel.rank_count * q)))
    prerank = min(funnel.prerank_count, max(rank, round(funnel.prerank_count * q)))
    recall = min(funnel.recall_count, max(4 * count, prerank, round(funnel.recall_count * q)))
    return replace(funnel, recall_count=recall, prerank_count=prerank, rank_count=rank)


def mark_shrunk(
    response: gateway_pb2.RecommendResponse, q: float, reason: str, metrics: AdmissionMetrics
) -> None:
    """The answer says it came from a smaller funnel: degraded, stage "funnel", and with debug a
    trace entry whose reason names why and the factor."""
    metrics.shrunk.labels(reason).inc()
    response.degraded = True
    response.degraded_stages.append("funnel")
    if response.trace:
        response.trace.add(stage="funnel", degraded=True, degraded_reason=f"{reason} q={q:.2f}")
