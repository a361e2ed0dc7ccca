"""Client channel behaviour against real servers: deadlines, retries, round robin."""

from __future__ import annotations

import time

import grpc
import pytest

from cascade.client import ClientSettings, make_channel, service_config
from cascade.server import ServerSettings
from cascade.v1 import rerank_pb2_grpc
from tests.cascade.test_server import rerank_request, start_fake

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake():
    running, servicer = start_fake()
    yield running, servicer
    running.stop(grace=0)


def call(target: str, request, settings: ClientSettings, **kwargs):
    with make_channel(target, settings, **kwargs) as channel:
        return rerank_pb2_grpc.RerankStub(channel).Rerank(request)


def test_calls_without_timeout_get_the_default_deadline(fake):
    running, servicer = fake
    settings = ClientSettings(timeout_s=0.3)
    with make_channel(running.address, settings) as channel:
        stub = rerank_pb2_grpc.RerankStub(channel)
        stub.Rerank(rerank_request(count=1))  # connected
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as caught:  # held in the server until released
            stub.Rerank(rerank_request(count=1, hold=True))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - start < 10  # the default deadline, not the 30 s hold
        servicer.release.set()
        # A caller's own timeout wins over the default.
        reply = stub.Rerank(rerank_request(count=1, sleep_ms=200), timeout=2)
        assert reply.candidates.item_ids == [100]


def test_unavailable_is_retried(fake):
    running, servicer = fake
    servicer.fail_next = 2
    reply = call(running.address, rerank_request(count=1), ClientSettings(max_attempts=3))
    assert reply.candidates.item_ids == [100]
    assert servicer.calls == 3


def test_no_retry_when_disabled_or_not_idempotent(fake):
    running, servicer = fake
    for settings, kwargs in (
        (ClientSettings(max_attempts=1), {}),
        (ClientSettings(), {"retry_methods": ()}),
        (ClientSettings(), {"retry_methods": ["cascade.v1.Rank"]}),
    ):
        servicer.calls, servicer.fail_next = 0, 1
        with pytest.raises(grpc.RpcError) as caught:
            call(running.address, rerank_request(count=1), settings, **kwargs)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls == 1
    servicer.calls, servicer.fail_next = 0, 1
    call(
        running.address,
        rerank_request(count=1),
        ClientSettings(),
        retry_methods=["cascade.v1.Rerank/Rerank"],
    )
    assert servicer.calls == 2


def test_other_errors_are_not_retried(fake):
    running, servicer = fake
    with pytest.raises(grpc.RpcError) as caught:
        call(running.address, rerank_request(count=9), ClientSettings())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.calls == 1


def test_round_robin_spreads_calls_and_survives_a_replica_stopping():
    (first, one), (second, two) = start_fake(), start_fake()
    try:
        target = f"ipv4:{first.address},{second.address}"
        with make_channel(target, ClientSettings(timeout_s=2)) as channel:
            stub = rerank_pb2_grpc.RerankStub(channel)
            grpc.channel_ready_future(channel).result(timeout=5)
            for _ in range(20):
                stub.Rerank(rerank_request(count=1))
            assert one.calls > 0 and two.calls > 0
            first.stop(grace=1)
            for _ in range(20):  # retries on UNAVAILABLE cover the switch-over
                stub.Rerank(rerank_request(count=1))
            assert two.calls >= 20
    finally:
        first.stop(grace=0)
        second.stop(grace=0)


def test_service_config_shape():
    config = service_config(ClientSettings(max_attempts=4, initial_backoff_s=0.02))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["name"] == [{}]
    assert method["retryPolicy"]["maxAttempts"] == 4
    assert method["retryPolicy"]["initialBackoff"] == "0.020s"
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "methodConfig" not in service_config(ClientSettings(max_attempts=1))
    assert service_config(ClientSettings(), ["cascade.v1.Gateway/Recommend"])["methodConfig"][0][
        "name"
    ] == [{"service": "cascade.v1.Gateway", "method": "Recommend"}]
    with pytest.raises(ValueError):
        ClientSettings(max_attempts=6)
    assert ServerSettings().max_workers == 4
