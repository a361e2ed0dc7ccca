"""Requests whose bytes do not parse: answered INVALID_ARGUMENT, counted, and logged as a summary.

gRPC's own path for a request that fails to deserialize answers INTERNAL and logs a full
traceback per call, so a client sending garbage floods the log (1,388 tracebacks for 1,500 fuzzed
payloads). This interceptor wraps every method's request parser: a payload that does not parse
becomes a marker the method's wrapped behaviour answers with INVALID_ARGUMENT ("the request is not
a valid <message>"), counts in `cascade_malformed_requests{stage, rpc}`, and is logged as at most
one summary line per interval with the count (`python -m bench.fuzz` measures lines per 1,000).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

Clock = Callable[[], float]
SUMMARY_INTERVAL_S = 10.0  # at most one summary line per server per this many seconds


@dataclass(frozen=True)
class Malformed:
    """What the wrapped parser returns for bytes that are not a valid request."""

    reason: str


class MalformedLog:
    """At most one log line per `interval_s`, each with the count since the last one: the first
    malformed request after a quiet interval is logged at once, the rest of a burst in one line
    when the interval ends (a timer thread, so the count is never held back)."""

    def __init__(
        self, stage: str, interval_s: float = SUMMARY_INTERVAL_S, clock: Clock = time.monotonic
    ):
        self.stage, self.interval_s, self.clock = stage, interval_s, clock
        self.lines = 0  # lines written so far (the fuzz benchmark reads it)
        self._pending = 0
        self._last = ""  # the latest malformed request's rpc and parse error
        self._next_line_at = -float("inf")
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def record(self, rpc: str, reason: str) -> None:
        with self._lock:
            self._pending += 1
            self._last = f"{rpc}: {reason}"
            now = self.clock()
            if now >= self._next_line_at:
                self._write(now)
            elif self._timer is None:
                self._timer = threading.Timer(self._next_line_at - now, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write the pending count now (the timer's job; also on shutdown)."""
        with self._lock:
            self._timer = None
            if self._pending:
                self._write(self.clock())

    def close(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()

    def _write(self, now: float) -> None:
        log.warning(
            "%s: %d malformed request%s answered INVALID_ARGUMENT (at most one line per %.0f s; "
            "last: %s)",
            self.stage,
            self._pending,
            "" if self._pending == 1 else "s",
            self.interval_s,
            self._last,
        )
        self.lines += 1
        self._pending = 0
        self._next_line_at = now + self.interval_s


class MalformedRequests(grpc.ServerInterceptor):
    """Every unary method's parser wrapped once (the wrapped handler is reused per method)."""

    def __init__(
        self, stage: str, registry: CollectorRegistry, summary: MalformedLog | None = None
    ):
        self.summary = MalformedLog(stage) if summary is None else summary
        self.count = Counter(
            "cascade_malformed_requests",
            "Requests whose bytes do not parse as the method's request message (answered "
            "INVALID_ARGUMENT), by rpc.",
            ["stage", "rpc"],
            registry=registry,
        )
        self.stage = stage
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped handler)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = handler._replace(
            request_deserializer=_parser(handler.request_deserializer),
            unary_unary=self._answer_malformed(
                handler.unary_unary, method.lstrip("/"), _message_name(handler.request_deserializer)
            ),
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _answer_malformed(self, behavior, rpc: str, message: str):
        counted = self.count.labels(self.stage, rpc)

        def run(request, context: grpc.ServicerContext):
            if isinstance(request, Malformed):
                counted.inc()
                self.summary.record(rpc, request.reason)
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {message}"
                )
            return behavior(request, context)

        return run

    def close(self) -> None:
        self.summary.close()


def _parser(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return Malformed(str(error) or type(error).__name__)

    return parse


def _message_name(deserialize: Callable[[bytes], Any]) -> str:
    """`cascade.v1.RecommendRequest` for the generated `RecommendRequest.FromString`."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request message")
