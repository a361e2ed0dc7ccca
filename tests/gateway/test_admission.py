"""Admission control on a real gateway over loopback: refusals carry the pushback hint and come back
at once, the SDK honours the hint, and a smaller funnel is announced in the answer."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from gateway.admission import PUSHBACK_KEY, QUALITY_KEY, AdmissionSettings
from gateway.client import CascadeClient, RetryBudget, pushback_s
from gateway.limits import LimitSettings

ONE_SLOT = LimitSettings(initial_limit=1, min_limit=1, max_limit=1)


def _holding(stack) -> threading.Thread:
    """A Recommend that takes the only slot while rank sleeps; returns once it is admitted (the
    limiter counts it), so no sleep has to guess how long admission takes on a busy machine."""
    address = stack.gateway.address
    thread = threading.Thread(
        target=lambda: CascadeClient(address, timeout_s=30.0).recommend(1, count=3)
    )
    thread.start()
    limiter = stack.gateway.service.admission.limiter
    deadline = time.monotonic() + 20
    while limiter.in_flight < 1:
        assert time.monotonic() < deadline, "the holding call was never admitted"
        time.sleep(0.01)
    return thread


def test_a_refusal_is_resource_exhausted_with_a_pushback_hint_and_fast(stack_factory):
    # Rank holds the admitted call for 3 s: a refusal that waited for it would come after it.
    stack = stack_factory(rank_delay_s=3.0, admission=AdmissionSettings(limit=ONE_SLOT))
    holder = _holding(stack)
    channel = grpc.insecure_channel(stack.gateway.address)
    from cascade.v1 import gateway_pb2, gateway_pb2_grpc

    stub = gateway_pb2_grpc.GatewayStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Recommend(gateway_pb2.RecommendRequest(user_id=2, count=3), timeout=30.0)
    answered_while_admitted_ran = holder.is_alive()
    holder.join()
    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    hints = [value for key, value in error.trailing_metadata() if key == PUSHBACK_KEY]
    assert len(hints) == 1 and int(hints[0]) >= 10
    assert pushback_s(error) == int(hints[0]) / 1000
    assert answered_while_admitted_ran  # at once, not queued behind the admitted call
    # The slot is back: the next call is admitted and answered.
    answer = stub.Recommend(gateway_pb2.RecommendRequest(user_id=2, count=3), timeout=30.0)
    # (rank, still 3 s slow, misses its budget and is replaced: admitted is what is checked)
    assert len(answer.items.item_ids) == 3 and list(answer.degraded_stages) == ["rank"]
    channel.close()


def test_the_sdk_waits_the_hinted_delay_then_retries_once(stack_factory):
    stack = stack_factory(rank_delay_s=2.0, admission=AdmissionSettings(limit=ONE_SLOT))
    holder = _holding(stack)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        holder.join()  # the hinted delay, stretched until the slot is surely free

    with CascadeClient(stack.gateway.address, timeout_s=30.0, sleep=sleep) as client:
        answer = client.recommend(2, count=3)
    assert len(slept) == 1 and 0.01 <= slept[0] < 1.0
    assert len(answer.items.item_ids) == 3


def test_the_sdk_does_not_retry_on_a_negative_hint_or_an_empty_budget(stack_factory):
    admission = AdmissionSettings(limit=ONE_SLOT, no_retry_share=0.0)  # any refusal: "no retry"
    stack = stack_factory(rank_delay_s=2.0, admission=admission)
    holder = _holding(stack)
    slept: list[float] = []
    with CascadeClient(stack.gateway.address, timeout_s=30.0, sleep=slept.append) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.recommend(2, count=3)
    holder.join()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(refused.value.trailing_metadata())[PUSHBACK_KEY] == "-1"
    assert pushback_s(refused.value) is None and slept == []
    budget = RetryBudget(max_tokens=2)
    assert budget.withdraw() and not budget.withdraw()  # at half the bucket: no more retries
    for _ in range(10):
        budget.deposit()
    assert budget.withdraw()


def test_a_request_that_does_not_parse_gives_its_slot_back(stack_factory):
    stack = stack_factory(admission=AdmissionSettings(limit=ONE_SLOT))
    channel = grpc.insecure_channel(stack.gateway.address)
    raw = channel.unary_unary("/cascade.v1.Gateway/Recommend")
    for _ in range(3):  # with the slot leaked, the second would already be refused
        with pytest.raises(grpc.RpcError) as bad:
            raw(b"\xff\xff\xff", timeout=5.0)
        assert bad.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        assert len(client.recommend(2, count=3).items.item_ids) == 3


def test_a_smaller_funnel_is_announced_and_still_fills_the_page(stack_factory):
    stack = stack_factory()
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        full = client.recommend(3, count=5, debug=True)
        client._metadata = ((QUALITY_KEY, "0.3"),)
        small = client.recommend(3, count=5, debug=True)
    assert not full.degraded and "funnel" not in full.degraded_stages
    assert small.degraded and list(small.degraded_stages) == ["funnel"]
    trace = {t.stage: t for t in small.trace}
    assert trace["funnel"].degraded_reason == "REQUESTED q=0.30"
    # recall_count 40 -> max(4 x 5, 12) = 20 asked; rank keeps max(2 x 5, 15 x 0.3) = 10.
    full_recall = {t.stage: t for t in full.trace}["recall"].candidates_out
    assert trace["recall"].candidates_out <= 20 < full_recall
    assert trace["rank"].candidates_out == 10
    assert len(small.items.item_ids) == 5


def test_a_refusal_needs_no_worker_and_never_reads_the_request():
    """Over the limit, the call is answered on arrival: with the server's only worker busy, the
    refusal still comes back at once, and the request's bytes are never parsed."""
    from cascade.server import ServerSettings, serve
    from cascade.telemetry import new_registry
    from gateway.admission import Admission

    parsed: list[bytes] = []
    working, release = threading.Event(), threading.Event()

    def slow(request: bytes, context) -> bytes:
        working.set()
        release.wait(30)  # holds the only worker until the refusal is in
        return request

    def parse(data: bytes) -> bytes:
        parsed.append(data)
        return data

    def add(server: grpc.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(slow, request_deserializer=parse)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Slow", {"Call": handler}),)
        )
        return ["test.Slow"]

    registry = new_registry(process_metrics=False)
    admission = Admission(AdmissionSettings(limit=ONE_SLOT), registry, methods=("/test.Slow/Call",))
    settings = ServerSettings(max_workers=1, max_queued=0, metrics_port=-1, grace_s=0.1)
    running = serve("slow", add, settings, registry, [admission])
    channel = grpc.insecure_channel(running.address)
    call = channel.unary_unary("/test.Slow/Call")
    try:
        holder = threading.Thread(target=lambda: call(b"admitted", timeout=30))
        holder.start()
        assert working.wait(20)  # the only slot and the only worker are taken
        with pytest.raises(grpc.RpcError) as refused:
            call(b"refused", timeout=30)
        release.set()  # only now can the worker finish: the refusal did not wait for it
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert PUSHBACK_KEY in dict(refused.value.trailing_metadata())
        holder.join()
        assert parsed == [b"admitted"]  # the refused call's request was never read
        refusals = registry.get_sample_value("cascade_gateway_refused_total", {"reason": "LIMIT"})
        assert refusals == 1.0
    finally:
        release.set()
        channel.close()
        running.stop(0)
