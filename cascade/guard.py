"""The cheap overload guard every server runs, and the refusal path it shares with the gateway's
admission control: a refused call is answered on arrival, before it is queued or even read.

QueueGuard: when more than `max_queued` calls already wait for a worker thread, a new call is
refused at once (RESOURCE_EXHAUSTED, `grpc-retry-pushback-ms`) instead of joining the back of the
queue. For a stage this turns a timeout into a fast failure the gateway answers with its fallback.
(gRPC itself already drops a queued call whose deadline passed before it reaches a worker.)

`refusal_handler`: the decision is taken in an interceptor, on gRPC's polling thread, and the
refusal runs right there too: a request-streaming handler never waits for the request message
(a unary one would wait for the polling thread to deliver it) and its behavior is "submitted" to
an executor that runs it in place. No thread hand-off, no queue: measured by `make
bench-overload` (refusal p99 from the client's side).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc
from prometheus_client import CollectorRegistry, Counter

PUSHBACK_KEY = "grpc-retry-pushback-ms"


class _InPlace(futures.ThreadPoolExecutor):
    """An executor that runs what it is given at once on the submitting thread. gRPC only honours
    a behavior's `experimental_thread_pool` when it is a ThreadPoolExecutor, hence the base; no
    thread is ever started."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="unused")

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        done: futures.Future = futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as error:  # gRPC's own wrapper catches the behavior's errors
            done.set_exception(error)
        return done


IN_PLACE = _InPlace()


def refusal_handler(
    handler: grpc.RpcMethodHandler, refuse: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    """`handler` replaced by one that answers with `refuse(context)` (which aborts) on the polling
    thread as the call arrives, without reading the request."""

    def behavior(_requests, context: grpc.ServicerContext) -> None:
        refuse(context)

    behavior.experimental_thread_pool = IN_PLACE  # type: ignore[attr-defined]  # gRPC reads this attribute off the behavior function
    return grpc.stream_unary_rpc_method_handler(
        behavior, response_serializer=handler.response_serializer
    )


def refuse_with_pushback(context: grpc.ServicerContext, pushback_ms: int, details: str) -> None:
    """RESOURCE_EXHAUSTED with the retry hint in the trailers (gRFC A6: milliseconds to wait
    before one retry; negative: do not retry)."""
    context.set_trailing_metadata(((PUSHBACK_KEY, str(pushback_ms)),))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)


class QueueGuard(grpc.ServerInterceptor):
    def __init__(
        self,
        stage: str,
        pool: futures.ThreadPoolExecutor,
        max_queued: int,
        registry: CollectorRegistry,
        pushback_ms: int = 20,
    ):
        self.pool, self.max_queued, self.pushback_ms = pool, max_queued, pushback_ms
        self.refused = Counter(
            "cascade_queue_refused",
            "Calls refused at once because max_queued calls already waited for a worker.",
            ["stage"],
            registry=registry,
        ).labels(stage)

    def queued(self) -> int:
        return self.pool._work_queue.qsize()  # the executor's own queue: the calls waiting

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not self.max_queued:
            return handler
        if self.queued() < self.max_queued:
            return handler
        return refusal_handler(handler, self._refuse)

    def _refuse(self, context: grpc.ServicerContext) -> None:
        self.refused.inc()
        refuse_with_pushback(context, self.pushback_ms, "queue full; retry later")
