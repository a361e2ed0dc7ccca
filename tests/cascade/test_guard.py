"""The queue guard on a real server: with the worker busy and the queue at its bound, one more
call is refused at once with a pushback hint, while the queued ones are still answered."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from cascade.guard import PUSHBACK_KEY
from cascade.server import ServerSettings, serve
from cascade.telemetry import new_registry


def test_a_call_past_the_queue_bound_is_refused_at_once_with_pushback():
    started, release = threading.Event(), threading.Event()

    def slow(request: bytes, context) -> bytes:
        started.set()
        release.wait(10)  # the worker stays busy until the test has been refused
        return request

    def add(server: grpc.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(slow)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Slow", {"Call": handler}),)
        )
        return ["test.Slow"]

    registry = new_registry(process_metrics=False)
    settings = ServerSettings(max_workers=1, max_queued=1, metrics_port=-1, grace_s=0.1)
    running = serve("slow", add, settings, registry)
    channel = grpc.insecure_channel(running.address)
    call = channel.unary_unary("/test.Slow/Call")
    answers: list[bytes] = []
    try:
        waiting = [
            threading.Thread(target=lambda m=m: answers.append(call(m, timeout=5)))
            for m in (b"running", b"queued")
        ]
        running_call, queued_call = waiting
        running_call.start()
        assert started.wait(10)  # the only worker is busy
        queued_call.start()
        deadline = time.monotonic() + 10
        while running._pool._work_queue.qsize() < 1:  # the second call waits for the worker
            assert time.monotonic() < deadline, "the second call never queued"
            time.sleep(0.01)
        sent = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            call(b"one more", timeout=5)
        assert time.perf_counter() - sent < 1.0  # at once: the worker is held until release
        release.set()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(refused.value.trailing_metadata())[PUSHBACK_KEY] == "20"
        for thread in waiting:
            thread.join()
        assert sorted(answers) == [b"queued", b"running"]
        refusals = registry.get_sample_value("cascade_queue_refused_total", {"stage": "slow"})
        assert refusals == 1.0
    finally:
        release.set()
        channel.close()
        running.stop(0)
