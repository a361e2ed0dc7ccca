"""A request time the caller sets (clock "caller"): requests, logged impressions and events with
no time of their own run on it; a malformed header is INVALID_ARGUMENT naming it; the other
clocks ignore it."""

from __future__ import annotations

import grpc
import pytest

from cascade.client import field_violations
from cascade.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.client import CascadeClient
from gateway.request_time import REQUEST_TIME_HEADER
from gateway.server import GatewaySettings

pytestmark = pytest.mark.timeout(120)
SIMULATED_MS = 1_900_000_000_000  # 2030: after the data's log and the wall clock alike


def test_the_callers_time_stamps_the_request_and_events_without_a_time(stack_factory):
    stack = stack_factory(clock="caller")
    service = stack.gateway.service
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        answer = client.recommend(2, count=3, request_time_ms=SIMULATED_MS)
        item = answer.items.item_ids[0]
        event = gateway_pb2.Event(
            user_id=2, item_id=item, type=gateway_pb2.EVENT_TYPE_PLAY, request_id=answer.request_id
        )
        assert client.feedback([event], request_time_ms=SIMULATED_MS + 5_000).accepted == 1
        plain = client.recommend(2, count=3)  # no header: the "data" clock
    service.impressions.close()
    times = {
        r["request_id"]: r["request_time_ms"] for r in service.log.read_impressions().to_pylist()
    }
    assert times[answer.request_id] == SIMULATED_MS
    assert times[plain.request_id] < SIMULATED_MS
    (logged,) = service.log.read_events().to_pylist()
    assert logged["timestamp_ms"] == SIMULATED_MS + 5_000


@pytest.mark.parametrize("value", ["soon", "-5", "0", "1e12", str(10**13)])
def test_a_malformed_request_time_is_invalid_argument_naming_the_header(stack_factory, value):
    stack = stack_factory(clock="caller")
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Recommend(
                gateway_pb2.RecommendRequest(user_id=2, count=3),
                timeout=5,
                metadata=((REQUEST_TIME_HEADER, value),),
            )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert REQUEST_TIME_HEADER in field_violations(error.value)


def test_the_data_clock_ignores_the_header(stack_factory):
    stack = stack_factory()  # clock "data"
    service = stack.gateway.service
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        answer = client.recommend(2, count=3, request_time_ms=SIMULATED_MS)
    service.impressions.close()
    (row,) = service.log.read_impressions().to_pylist()
    assert row["request_id"] == answer.request_id and row["request_time_ms"] < SIMULATED_MS


def test_an_unknown_clock_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="caller"):
        GatewaySettings(clock="simulated")
