"""Auth on the public API, and fuzzing: nothing a client sends may crash the gateway."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade.v1 import gateway_pb2
from gateway.cli import feedback_main, recommend_main
from gateway.client import CascadeClient

pytestmark = pytest.mark.timeout(120)
TOKEN = "s3cret-token"


def own_stack(built, **overrides):
    """A stack of its own: these tests record Feedback, which other tests must not see."""
    from tests.gateway.conftest import Stack, gateway_settings, start, start_stages

    stages, recall_service = start_stages(built)
    settings = gateway_settings(built, stages, **overrides)
    stack = Stack(stages, start(settings), settings, recall_service)
    yield stack
    stack.gateway.stop(0)
    stack.gateway.service.close()
    for server in stages.values():
        server.stop(0)


@pytest.fixture(scope="module")
def secured(built):
    from tests.gateway.conftest import QUIET

    # Reflection is off by default; the local stack turns it on, as here.
    yield from own_stack(built, api_token=TOKEN, server=replace(QUIET, reflection=True))


@pytest.fixture(scope="module")
def fuzzed(built):
    yield from own_stack(built)


def call(address: str, metadata=None, method: str = "Recommend"):
    feedback = gateway_pb2.FeedbackRequest(
        events=[gateway_pb2.Event(user_id=2, item_id=1, type=gateway_pb2.EVENT_TYPE_CLICK)]
    )
    request, reply_type = {
        "Recommend": (
            gateway_pb2.RecommendRequest(user_id=2, count=3),
            gateway_pb2.RecommendResponse,
        ),
        "Feedback": (feedback, gateway_pb2.FeedbackResponse),
    }[method]
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(
            f"/cascade.v1.Gateway/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=reply_type.FromString,
        )
        return stub(request, metadata=metadata, timeout=5)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", "Bearer wrong"),),
        (("x-api-key", "s3cret"),),
        (("authorization", TOKEN),),
    ],  # the last lacks the "Bearer" scheme
)
@pytest.mark.parametrize("method", ["Recommend", "Feedback"])
def test_missing_or_wrong_token_is_unauthenticated(secured, metadata, method):
    accepted = secured.gateway.registry.get_sample_value(
        "cascade_gateway_feedback_events_total", {"outcome": "accepted"}
    )
    with pytest.raises(grpc.RpcError) as error:
        call(secured.gateway.address, metadata, method)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = secured.gateway.registry.get_sample_value(
        "cascade_gateway_feedback_events_total", {"outcome": "accepted"}
    )
    assert after == accepted  # a refused Feedback records nothing


def test_reflection_needs_no_token_and_lists_the_gateway(secured):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(secured.gateway.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "cascade.v1.Gateway" in services and "grpc.health.v1.Health" in services


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", f"Bearer {TOKEN}"),),
        (("x-api-key", TOKEN),),
        (("x-api-key", "wrong"), ("x-api-key", TOKEN)),
    ],  # any entry of the key may hold it
)
def test_the_right_token_is_served(secured, metadata):
    assert len(call(secured.gateway.address, metadata).items.item_ids) == 3
    assert call(secured.gateway.address, metadata, "Feedback").accepted == 1


@pytest.mark.parametrize("main", [recommend_main, feedback_main])
def test_the_cli_says_where_the_token_goes(secured, main, monkeypatch, capsys):
    monkeypatch.delenv("CASCADE_GATEWAY_API_TOKEN", raising=False)
    target = secured.gateway.address
    argv = ["--user", "2", "--target", target, "--timeout", "5"]
    argv += ["--count", "3"] if main is recommend_main else ["--item", "1", "--type", "click"]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"cascade {main.__name__.removesuffix('_main')}: the gateway at {target} needs an API "
        "token: pass --token TOKEN or set CASCADE_GATEWAY_API_TOKEN"
    ]
    assert main([*argv, "--token", "wrong"]) == 1
    assert "refused the API token given by --token or CASCADE_GATEWAY_API_TOKEN" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("CASCADE_GATEWAY_API_TOKEN", TOKEN)  # the variable alone is enough
    assert main(argv) == 0
    out = capsys.readouterr().out
    if main is recommend_main:
        assert "user 2: 3 items" in out and "found by" in out
    else:
        assert out.startswith("accepted 1 of 1")


def test_the_sdk_sends_the_token_and_health_needs_none(secured):
    with CascadeClient(secured.gateway.address, token=TOKEN, timeout_s=5) as client:
        assert len(client.recommend(2, count=3).items.item_ids) == 3
        assert client.feedback([(2, 1, "click")]).accepted == 1
    with grpc.insecure_channel(secured.gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="cascade.v1.Gateway"), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def valid_messages() -> list[bytes]:
    recommend = gateway_pb2.RecommendRequest(user_id=2, count=5, debug=True)
    recommend.context.extras["k"] = "v"
    feedback = gateway_pb2.FeedbackRequest(
        events=[gateway_pb2.Event(user_id=2, item_id=3, type=gateway_pb2.EVENT_TYPE_PLAY)]
    )
    return [recommend.SerializeToString(), feedback.SerializeToString()]


def mutate(message: bytes, positions: list[int], values: list[int]) -> bytes:
    data = bytearray(message)
    for position, value in zip(positions, values, strict=False):
        if data:
            data[position % len(data)] = value
    return bytes(data)


payloads = st.one_of(
    st.binary(max_size=256),
    st.builds(
        mutate,
        st.sampled_from(valid_messages()),
        st.lists(st.integers(0, 255), max_size=6),
        st.lists(st.integers(0, 255), max_size=6),
    ),
    st.builds(  # well-formed messages with extreme field values
        lambda user, count, debug: gateway_pb2.RecommendRequest(
            user_id=user, count=count, debug=debug
        ).SerializeToString(),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(0, 2**32 - 1),
        st.booleans(),
    ),
    st.builds(
        lambda user, item, kind, ts: gateway_pb2.FeedbackRequest(
            events=[gateway_pb2.Event(user_id=user, item_id=item, type=kind, timestamp_ms=ts)]
        ).SerializeToString(),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(-(2**31), 2**31 - 1),
        st.integers(-(2**63), 2**63 - 1),
    ),
)


@pytest.fixture(scope="module")
def raw_methods(fuzzed):
    channel = grpc.insecure_channel(fuzzed.gateway.address)
    methods = {
        name: channel.unary_unary(f"/cascade.v1.Gateway/{name}")  # bytes in, bytes out
        for name in ("Recommend", "Feedback")
    }
    yield methods
    channel.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["Recommend", "Feedback"]), payload=payloads)
def test_fuzzed_requests_never_crash_the_gateway(raw_methods, method, payload):
    try:
        raw_methods[method](payload, timeout=5)
    except grpc.RpcError as error:
        code = error.code()
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, error.details())


def test_the_gateway_is_still_up_after_fuzzing(fuzzed, raw_methods):
    request = gateway_pb2.RecommendRequest(user_id=2, count=3).SerializeToString()
    response = gateway_pb2.RecommendResponse.FromString(
        raw_methods["Recommend"](request, timeout=5)
    )
    assert len(response.items.item_ids) == 3
    metrics = fuzzed.gateway.registry
    unknown = metrics.get_sample_value(
        "cascade_rpc_requests_total",
        {
            "stage": "gateway",
            "rpc": "cascade.v1.Gateway/Recommend",
            "code": "UNKNOWN",
            "traffic": "live",
        },
    )
    assert unknown is None


def test_unparseable_requests_are_invalid_argument_counted_and_summarised(fuzzed, caplog):
    """Garbage bytes: INVALID_ARGUMENT naming the message, one log line for many, a count."""
    gateway = fuzzed.gateway
    metric = "cascade_malformed_requests_total"
    labels = {"stage": "gateway", "rpc": "cascade.v1.Gateway/Recommend"}
    before = gateway.registry.get_sample_value(metric, labels) or 0.0
    gateway.malformed.summary.flush()
    with grpc.insecure_channel(gateway.address) as channel:
        raw = channel.unary_unary("/cascade.v1.Gateway/Recommend")
        with caplog.at_level("DEBUG"):
            for _ in range(100):
                with pytest.raises(grpc.RpcError) as error:
                    raw(b"\x08" + b"\xff" * 10, timeout=5)  # a truncated varint
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (
                    error.value.details()
                    == "the request is not a valid cascade.v1.RecommendRequest"
                )
    assert gateway.registry.get_sample_value(metric, labels) == before + 100
    # At most the line the first one writes and one from a summary timer the fuzzing left.
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) <= 2
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    assert gateway.service.admission.limiter.in_flight == 0  # every slot went back
