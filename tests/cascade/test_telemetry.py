"""The shared metric helpers: model version info that follows a hot reload, no `_created` series."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
from prometheus_client import generate_latest

from cascade.telemetry import (
    MetricsInterceptor,
    ModelMetrics,
    RpcMetrics,
    new_registry,
    set_model_info,
)


def versions(registry, stage: str) -> dict[str, float]:
    return {
        sample.labels["model_version"]: sample.value
        for family in registry.collect()
        if family.name == "cascade_model_info"
        for sample in family.samples
        if sample.labels["stage"] == stage
    }


def test_model_info_is_one_series_per_stage_that_follows_a_reload():
    registry = new_registry(process_metrics=False)
    set_model_info(registry, "rank", "v1")
    set_model_info(registry, "prerank", "v1")
    assert versions(registry, "rank") == {"v1": 1.0}
    set_model_info(registry, "rank", "v2")  # the hot reload
    assert versions(registry, "rank") == {"v2": 1.0}
    assert versions(registry, "prerank") == {"v1": 1.0}  # another stage is untouched
    set_model_info(registry, "rank", "v2")  # the same version again: still one series
    assert versions(registry, "rank") == {"v2": 1.0}


def test_model_info_of_separate_registries_is_separate():
    first, second = new_registry(process_metrics=False), new_registry(process_metrics=False)
    ModelMetrics("rank", first).set_model_version("a")
    ModelMetrics("rank", second).set_model_version("b")
    assert versions(first, "rank") == {"a": 1.0} and versions(second, "rank") == {"b": 1.0}


def test_scrapes_carry_no_created_series():
    registry = new_registry(process_metrics=False)
    metrics = ModelMetrics("rank", registry)
    metrics.candidates_in.inc(5)
    metrics.inference.observe(0.001)
    text = generate_latest(registry).decode()
    assert 'cascade_candidates_total{direction="in",stage="rank"} 5.0' in text
    assert "_created" not in text


def test_the_metrics_wrapper_is_built_once_per_method_and_counts_every_call():
    registry = new_registry(process_metrics=False)
    interceptor = MetricsInterceptor(RpcMetrics("rank", registry))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    details = SimpleNamespace(method="/cascade.v1.Rank/Rank", invocation_metadata=())
    ok = SimpleNamespace(code=lambda: None, invocation_metadata=tuple)
    first = interceptor.intercept_service(lambda _: handler, details)
    second = interceptor.intercept_service(lambda _: handler, details)
    assert first is second  # reused: no new handler or closure per call
    assert first.unary_unary(b"x", ok) == b"x" and second.unary_unary(b"y", ok) == b"y"
    # A one-off handler (a refusal's) gets its own wrapper and leaves the method's in place.
    other = grpc.unary_unary_rpc_method_handler(lambda request, context: b"no")
    assert interceptor.intercept_service(lambda _: other, details).unary_unary(b"", ok) == b"no"
    assert interceptor.intercept_service(lambda _: handler, details) is first
    labels = {"stage": "rank", "rpc": "cascade.v1.Rank/Rank", "code": "OK", "traffic": "live"}
    assert registry.get_sample_value("cascade_rpc_requests_total", labels) == 3
