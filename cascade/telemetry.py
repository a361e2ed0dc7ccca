"""Prometheus metrics every stage exposes, and the server interceptor that records them.

Each server gets its own CollectorRegistry (several servers can then live in one process, as in
tests), served on its own HTTP port. Label sets stay small (a scrape of ~150 series cost ~15 ms
of server CPU on a 2-core VM): `stage`, `rpc` (only methods the server registered), `code`,
recall's `channel` and `model_version` (one series per service, cascade_model_info).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client import start_http_server as _start_http_server

# prometheus_client adds a `_created` series beside every counter and histogram child; nothing
# reads them and they were a third of each scrape (scrape cost grows with the series count).
disable_created_metrics()

# Roughly log-spaced from 0.5 ms (one loopback hop) to 1 s (a blown deadline budget).
LATENCY_BUCKETS = (
    0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


def new_registry(process_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process' CPU/memory/fd metrics unless told otherwise."""
    registry = CollectorRegistry()
    if process_metrics:
        ProcessCollector(registry=registry)
    return registry


# registry -> (its cascade_model_info gauge, {stage: the version it reports})
_model_info: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Gauge, dict[str, str]]] = (
    weakref.WeakKeyDictionary()
)
_model_info_lock = threading.Lock()


def set_model_info(registry: CollectorRegistry, stage: str, model_version: str) -> None:
    """cascade_model_info{stage, model_version} = 1 for the artifact `stage` serves now. Call at
    load and again after a hot reload: the previous version's series goes (after the new one is
    set, so a scrape in between sees two versions, never none)."""
    with _model_info_lock:
        entry = _model_info.get(registry)
        if entry is None:
            gauge = Gauge(
                "cascade_model_info",
                "1 for the model (artifact bundle) version a service is serving now.",
                ["stage", "model_version"],
                registry=registry,
            )
            entry = _model_info[registry] = (gauge, {})
        gauge, serving = entry
        gauge.labels(stage, model_version).set(1)
        previous = serving.get(stage)
        if previous is not None and previous != model_version:
            gauge.remove(stage, previous)
        serving[stage] = model_version


class ModelMetrics:
    """What a stage reports about its model beside its RPC metrics, one set per stage: model
    time (recall: channels + merge; prerank, rank: the scorer; rerank: the page selection) and the
    funnel (candidates in and out; recall has none in)."""

    def __init__(self, stage: str, registry: CollectorRegistry):
        self.stage, self.registry = stage, registry
        self.inference = Histogram(
            "cascade_model_latency_seconds",
            "Model time per request (feature lookups + the model).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(stage)
        candidates = Counter(
            "cascade_candidates",
            "Candidates received (in) and returned (out).",
            ["stage", "direction"],
            registry=registry,
        )
        self.candidates_in = candidates.labels(stage, "in")
        self.candidates_out = candidates.labels(stage, "out")
        self.unknown = Counter(
            "cascade_unknown_items",
            "Candidates the stage's item tables did not know (rank drops them, prerank ranks "
            "them last, rerank treats them as dissimilar to all).",
            ["stage"],
            registry=registry,
        ).labels(stage)

    def set_model_version(self, model_version: str) -> None:
        """cascade_model_info for this stage (at load, and again after a hot reload)."""
        set_model_info(self.registry, self.stage, model_version)


# Call metadata a caller sets on calls that are not served traffic (the gateway's shadow arm, an
# explained Recommend): the stage counts them under traffic="shadow" or "explain", apart from the
# answers users see (traffic="live"); an explained call changes no state (rerank records no page).
TRAFFIC_KEY = "cascade-traffic"
SHADOW = "shadow"
EXPLAIN = "explain"
LIVE = "live"
SHADOW_METADATA = ((TRAFFIC_KEY, SHADOW),)
EXPLAIN_METADATA = ((TRAFFIC_KEY, EXPLAIN),)


def traffic_of(context: grpc.ServicerContext) -> str:
    """ "shadow" or "explain" for a call marked so, else "live" (any other value too: three
    series at most)."""
    for key, value in context.invocation_metadata() or ():
        if key == TRAFFIC_KEY and value in (SHADOW, EXPLAIN):
            return str(value)
    return LIVE


class RpcMetrics:
    """The per-RPC metrics of one server: latency, answers by status code (both by traffic:
    live or a shadow arm's), calls in flight."""

    def __init__(self, stage: str, registry: CollectorRegistry):
        self.stage = stage
        self.latency = Histogram(
            "cascade_rpc_latency_seconds",
            "Server-side handling time of an RPC, from handler start to its last response.",
            ["stage", "rpc", "traffic"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "cascade_rpc_requests",
            "RPCs handled, by final status code (calls shed by maximum_concurrent_rpcs excluded).",
            ["stage", "rpc", "code", "traffic"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "cascade_rpc_in_flight",
            "RPCs being handled right now.",
            ["stage", "rpc", "traffic"],
            registry=registry,
        )
        self._per_rpc: dict[tuple[str, str], tuple] = {}  # children: labels() costs µs
        self._per_code: dict[tuple[str, grpc.StatusCode, str], Any] = {}

    def timed(self, behavior: Callable, rpc: str) -> Callable:
        """`behavior` (a unary-response handler) counted as calls of `rpc`: latency, calls in
        flight, and each call's final code (the context's; UNKNOWN if it raised otherwise). The
        bookkeeping is inline: a context manager per call costs more than it does."""
        live, children = self._rpc_children(rpc, LIVE), self._rpc_children  # shadow's: on use
        code_counter = self._code_counter

        def handle(request, context):
            traffic = traffic_of(context)
            latency, in_flight = live if traffic is LIVE else children(rpc, traffic)
            in_flight.inc()
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException:
                # context.abort() raises after setting the code; any other exception: UNKNOWN.
                aborted = context.code()
                code = aborted if aborted not in (None, grpc.StatusCode.OK) else code
                raise
            finally:
                latency.observe(time.perf_counter() - start)
                in_flight.dec()
                code_counter(rpc, code, traffic).inc()

        # A behavior that runs on its own pool (the gateway's refusals) keeps it.
        handle.experimental_thread_pool = getattr(  # type: ignore[attr-defined]  # gRPC reads this attribute off the behavior function
            behavior, "experimental_thread_pool", None
        )
        return handle

    def _rpc_children(self, rpc: str, traffic: str = LIVE) -> tuple:
        children = self._per_rpc.get((rpc, traffic))
        if children is None:
            children = (
                self.latency.labels(self.stage, rpc, traffic),
                self.in_flight.labels(self.stage, rpc, traffic),
            )
            self._per_rpc[(rpc, traffic)] = children
        return children

    def _code_counter(self, rpc: str, code: grpc.StatusCode, traffic: str = LIVE):
        counter = self._per_code.get((rpc, code, traffic))
        if counter is None:
            counter = self.requests.labels(self.stage, rpc, code.name, traffic)
            self._per_code[(rpc, code, traffic)] = counter
        return counter


class MetricsInterceptor(grpc.ServerInterceptor):
    """Wraps the handler of every registered unary-response method in RpcMetrics.timed's
    bookkeeping. A method's wrapped handler is built once and reused while the handler under it
    stays the same object (every call but a refusal's): no new handler, closure or context
    manager per call (`python -m bench.gateway_path`, server_interceptors_cpu)."""

    def __init__(self, metrics: RpcMetrics):
        self.metrics = metrics
        self._wrapped: dict[str, tuple] = {}  # method -> (the handler, its wrapped version)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED; no label for it
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap_handler(handler, method.lstrip("/"))
        if cached is None:  # the method's own handler comes first (a refusal's is one-off)
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_handler(self, handler, rpc: str):
        # Only unary-response RPCs (every stage call); streams such as health Watch pass through
        # untouched: wrapping would also hide their non-blocking flag and pin a worker thread.
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap(handler.unary_unary, rpc))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap(handler.stream_unary, rpc))
        return handler

    def _wrap(self, behavior: Callable, rpc: str) -> Callable:
        return self.metrics.timed(behavior, rpc)


@dataclass
class MetricsServer:
    """The HTTP server that exposes a registry at /metrics."""

    port: int
    _httpd: WSGIServer

    def close(self) -> None:
        """Stop serving; returns at once (the server's loop notices within 0.5 s, then the port
        is released) so that stopping a stage is not held up by its metrics."""

        def shutdown() -> None:
            self._httpd.shutdown()
            self._httpd.server_close()

        threading.Thread(target=shutdown, name="metrics-shutdown", daemon=True).start()


def start_metrics_server(
    registry: CollectorRegistry,
    port: int,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
) -> MetricsServer:
    """Serve `registry` on host:port (0 = an ephemeral port; MetricsServer.port is the real one),
    over HTTPS when `tls` gives (certificate, key) PEM files: read once, at start, so a rotated
    certificate takes a restart (the gRPC port re-reads its own). Raises OSError naming the
    address when it cannot bind or the files cannot be loaded."""
    certfile, keyfile = (None, None) if tls is None else (str(tls[0]), str(tls[1]))
    try:
        httpd, _thread = _start_http_server(
            port, addr=host, registry=registry, certfile=certfile, keyfile=keyfile
        )
    except OSError as error:
        raise OSError(
            error.errno, f"cannot serve metrics on {host}:{port}: {error.strerror}"
        ) from error
    return MetricsServer(httpd.server_port, httpd)
