"""The cheap overload guard every server runs: when more than `max_queued` calls already wait for
a worker thread, a new call is refused at once (RESOURCE_EXHAUSTED, `grpc-retry-pushback-ms`)
instead of joining the back of the queue.

The decision is taken on gRPC's polling thread, before the call is queued, and the refusal runs on
a one-thread pool of its own, so it never waits behind the queue it reports. For a stage this
turns a timeout into a fast failure the gateway answers with its fallback at once. (gRPC itself
already drops a queued call whose deadline passed before it reaches a worker.)
"""

from __future__ import annotations

from concurrent import futures

import grpc
from prometheus_client import CollectorRegistry, Counter

PUSHBACK_KEY = "grpc-retry-pushback-ms"


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
        self._refusals = futures.ThreadPoolExecutor(1, thread_name_prefix=f"{stage}-refuse")
        refuse = self._refuse

        def refuse_call(request, context):
            return refuse(request, context)

        refuse_call.experimental_thread_pool = self._refusals  # type: ignore[attr-defined]
        self._refuse_call = refuse_call

    def queued(self) -> int:
        return self.pool._work_queue.qsize()  # the executor's own queue: the calls waiting

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not self.max_queued:
            return handler
        if self.queued() < self.max_queued:
            return handler
        return handler._replace(unary_unary=self._refuse_call)

    def _refuse(self, _request, context: grpc.ServicerContext) -> None:
        self.refused.inc()
        context.set_trailing_metadata(((PUSHBACK_KEY, str(self.pushback_ms)),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry later")

    def close(self) -> None:
        self._refusals.shutdown(wait=False)
