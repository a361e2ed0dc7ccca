"""Integration tests of the server bootstrap: real servers on ephemeral 127.0.0.1 ports."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from cascade.candidates import InvalidField, from_proto, to_proto
from cascade.client import ClientSettings, field_violations, make_channel
from cascade.server import (
    BindError,
    RunningServer,
    ServerSettings,
    invalid_argument,
    read_port_file,
    serve,
)
from cascade.v1 import rerank_pb2, rerank_pb2_grpc

pytestmark = pytest.mark.timeout(30)
REPO_ROOT = Path(__file__).resolve().parents[2]
RERANK = rerank_pb2.DESCRIPTOR.services_by_name["Rerank"].full_name


class FakeRerank(rerank_pb2_grpc.RerankServicer):
    """Returns the first `count` candidates. Test knobs: `fail_next` calls answer UNAVAILABLE;
    extras["sleep_ms"] delays the answer; extras["hold"] waits until `release` is set; count 13
    raises (an unhandled bug)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_next = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def Rerank(self, request, context):
        with self._lock:
            self.calls += 1
            fail = self.fail_next > 0
            self.fail_next -= fail
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        self.started.set()
        time.sleep(int(request.user.context.extras.get("sleep_ms", "0")) / 1000)
        if "hold" in request.user.context.extras:
            self.release.wait(30)
        try:
            candidates = from_proto(request.candidates)
        except InvalidField as error:
            invalid_argument(context, error.field, error.description)
        if request.count == 13:
            raise RuntimeError("unlucky")
        if request.count > len(candidates.item_ids):
            invalid_argument(context, "count", f"{request.count} > {len(candidates.item_ids)}")
        response = rerank_pb2.RerankResponse()
        to_proto(*candidates.take(slice(0, request.count)), out=response.candidates)
        return response


def start_fake(settings: ServerSettings | None = None) -> tuple[RunningServer, FakeRerank]:
    servicer = FakeRerank()

    def add(server: grpc.Server) -> list[str]:
        rerank_pb2_grpc.add_RerankServicer_to_server(servicer, server)
        return [RERANK]

    return serve("rerank", add, settings or ServerSettings()), servicer


def rerank_request(
    count: int, n: int = 5, sleep_ms: int = 0, hold: bool = False
) -> rerank_pb2.RerankRequest:
    request = rerank_pb2.RerankRequest(count=count)
    if sleep_ms:
        request.user.context.extras["sleep_ms"] = str(sleep_ms)
    if hold:
        request.user.context.extras["hold"] = "1"
    to_proto(np.arange(100, 100 + n), np.linspace(1, 0, n), out=request.candidates)
    return request


@pytest.fixture
def fake() -> Iterator[tuple[RunningServer, FakeRerank]]:
    running, servicer = start_fake()
    yield running, servicer
    running.stop(grace=0)


@pytest.fixture
def stub(fake) -> Iterator[rerank_pb2_grpc.RerankStub]:
    with make_channel(fake[0].address, ClientSettings(max_attempts=1)) as channel:
        yield rerank_pb2_grpc.RerankStub(channel)


def scrape(running: RunningServer) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5)
    samples = {}
    for family in text_string_to_metric_families(text.read().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_rerank_answers_through_the_bootstrap(stub):
    response = stub.Rerank(rerank_request(count=2))
    np.testing.assert_array_equal(from_proto(response.candidates).item_ids, [100, 101])


def test_health_is_serving_then_not_serving_during_shutdown():
    # A shutdown delay far longer than the checks need: NOT_SERVING is observed by polling, not
    # by hoping a fixed sleep lands inside the window.
    running, _ = start_fake(ServerSettings(shutdown_delay_s=5.0))
    with grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", RERANK):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        statuses = {}
        for service in ("", RERANK):
            for _ in range(200):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.01)
            statuses[service] = reply.status
        assert stopper.is_alive()  # still inside shutdown_delay_s, and answering
        assert set(statuses.values()) == {health_pb2.HealthCheckResponse.NOT_SERVING}
        stopper.join(10)
        assert running.wait(timeout=1)


def test_reflection_lists_the_services_when_on_and_is_off_by_default(fake):
    running, _ = start_fake(ServerSettings(reflection=True))
    try:
        with grpc.insecure_channel(running.address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
    finally:
        running.stop(0)
    assert set(services) >= {
        RERANK,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    with grpc.insecure_channel(fake[0].address) as channel, pytest.raises(grpc.RpcError):
        ProtoReflectionDescriptorDatabase(channel).get_services()


def test_metrics_count_calls_by_code_and_time_them(fake, stub):
    running, _ = fake
    stub.Rerank(rerank_request(count=1))
    for bad in (rerank_request(count=9), rerank_request(count=13)):
        with pytest.raises(grpc.RpcError):
            stub.Rerank(bad)
    samples = scrape(running)
    rpc = (("rpc", "cascade.v1.Rerank/Rerank"), ("stage", "rerank"))
    labels = tuple(sorted((*rpc, ("traffic", "live"))))
    for code in ("OK", "INVALID_ARGUMENT", "UNKNOWN"):
        key = ("cascade_rpc_requests_total", tuple(sorted((*labels, ("code", code)))))
        assert samples[key] == 1, code
    assert samples[("cascade_rpc_latency_seconds_count", labels)] == 3
    assert (
        "cascade_rpc_latency_seconds_bucket",
        tuple(sorted((*labels, ("le", "0.0005")))),
    ) in samples
    assert samples[("cascade_rpc_in_flight", labels)] == 0
    assert not [key for key in samples if ("traffic", "shadow") in key[1]]  # made on first use


def test_calls_marked_shadow_are_counted_apart_from_live_traffic(fake, stub):
    from cascade.telemetry import SHADOW_METADATA

    running, _ = fake
    stub.Rerank(rerank_request(count=1))
    for _ in range(2):
        stub.Rerank(rerank_request(count=1), metadata=SHADOW_METADATA)
    stub.Rerank(rerank_request(count=1), metadata=(("cascade-traffic", "anything else"),))
    samples = scrape(running)
    rpc = (("rpc", "cascade.v1.Rerank/Rerank"), ("stage", "rerank"))
    for traffic, calls in (("live", 2), ("shadow", 2)):
        labels = tuple(sorted((*rpc, ("code", "OK"), ("traffic", traffic))))
        assert samples[("cascade_rpc_requests_total", labels)] == calls, traffic
        labels = tuple(sorted((*rpc, ("traffic", traffic))))
        assert samples[("cascade_rpc_latency_seconds_count", labels)] == calls, traffic


def test_field_violation_names_the_field(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Rerank(rerank_request(count=9))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {"count": "9 > 5"}
    request = rerank_request(count=1)
    request.candidates.scores.append(0.5)  # one score too many
    with pytest.raises(grpc.RpcError) as caught:
        stub.Rerank(request)
    assert list(field_violations(caught.value)) == ["candidates.scores"]


def test_second_server_on_the_same_port_fails_naming_it(fake):
    running, _ = fake
    with pytest.raises(BindError, match=f"gRPC port {running.port}"):
        start_fake(ServerSettings(port=running.port))
    with pytest.raises(BindError, match=f"metrics port {running.metrics_port}"):
        start_fake(ServerSettings(metrics_port=running.metrics_port))


def test_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones():
    running, servicer = start_fake()
    with make_channel(running.address, ClientSettings(max_attempts=1, timeout_s=6)) as channel:
        stub = rerank_pb2_grpc.RerankStub(channel)
        stub.Rerank(rerank_request(count=1))  # connected
        servicer.started.clear()  # set by the call above: wait for the held one's own start
        # Held in the server until the test releases it: in flight for as long as it takes.
        slow = stub.Rerank.future(rerank_request(count=2, hold=True))
        assert servicer.started.wait(10)
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 20})
        stopper.start()
        refused = None
        for _ in range(1000):  # new calls are refused once stop() has begun
            try:
                stub.Rerank(rerank_request(count=1), timeout=1)
            except grpc.RpcError as error:
                refused = error.code()
                break
            time.sleep(0.01)
        # Refused: UNAVAILABLE, or CANCELLED when the call reaches the server while it shuts down.
        assert refused in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not slow.done()
        servicer.release.set()
        assert len(slow.result().candidates.item_ids) == 2  # the in-flight call finished OK
        stopper.join(20)
        assert not stopper.is_alive()


def test_calls_beyond_the_concurrency_cap_are_shed():
    running, servicer = start_fake(ServerSettings(maximum_concurrent_rpcs=1))
    try:
        with make_channel(running.address, ClientSettings(max_attempts=1)) as channel:
            stub = rerank_pb2_grpc.RerankStub(channel)
            held = stub.Rerank.future(rerank_request(count=1, hold=True))
            assert servicer.started.wait(10)  # the one allowed call is in flight until released
            with pytest.raises(grpc.RpcError) as caught:
                stub.Rerank(rerank_request(count=1))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            servicer.release.set()
            assert held.result(timeout=10).candidates.item_ids == [100]
    finally:
        running.stop(grace=0)


# A service declared the way every server.py declares itself, run through its `main`.
SERVE_SCRIPT = textwrap.dedent("""
    import logging, sys
    from dataclasses import dataclass, field
    from pathlib import Path
    sys.path.insert(0, ".")
    from tests.cascade.test_server import FakeRerank, RERANK
    from cascade.server import ServerSettings, StageServer
    from cascade.v1 import rerank_pb2_grpc
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    @dataclass(frozen=True)
    class Settings:
        server: ServerSettings = field(
            default_factory=lambda: ServerSettings(metrics_port=-1, reload_interval_s=0)
        )
        artifacts: Path = Path("artifacts")
        bundle: str = "current"
    class Service(FakeRerank):
        def swap(self, loaded):
            return "v1"
    server = StageServer(
        name="rerank", settings=Settings, load=lambda settings: "model",
        service=lambda settings, loaded, registry: Service(),
        register=rerank_pb2_grpc.add_RerankServicer_to_server, service_name=RERANK,
        close=lambda service: print("closed", flush=True),
    )
    code = server.main([])
    print(f"exited cleanly with {code}", flush=True)
""")


def test_stage_main_shuts_down_gracefully_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        line = process.stdout.readline()
        assert "serving cascade.v1.Rerank on 127.0.0.1:" in line, line
        address = line.split(" on ")[1].split(",")[0]
        with make_channel(address) as channel:
            reply = rerank_pb2_grpc.RerankStub(channel).Rerank(rerank_request(count=1))
            assert reply.candidates.item_ids == [100]
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "closed" in out and "exited cleanly with 0" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_server_on_port_0_reports_the_ports_it_bound(tmp_path):
    port_file = tmp_path / "ports.json"
    running, _ = start_fake(ServerSettings(port_file=str(port_file)))
    try:
        assert read_port_file(port_file) == (running.port, running.metrics_port)
        assert running.port > 0 and running.metrics_port > 0
        with make_channel(running.address, ClientSettings(max_attempts=1)) as channel:
            reply = rerank_pb2_grpc.RerankStub(channel).Rerank(rerank_request(count=1), timeout=5)
        assert list(reply.candidates.item_ids) == [100]
    finally:
        running.stop(0)


# A truncated varint: no protobuf message parses from these bytes.
UNPARSEABLE = b"\x08" + b"\xff" * 10


def test_unparseable_requests_get_invalid_argument_one_summary_line_and_a_count(fake, caplog):
    running, servicer = fake
    with grpc.insecure_channel(running.address) as channel:
        raw = channel.unary_unary(f"/{RERANK}/Rerank")  # bytes in, bytes out
        with caplog.at_level("DEBUG"):
            for _ in range(200):
                with pytest.raises(grpc.RpcError) as error:
                    raw(UNPARSEABLE, timeout=5)
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                details = error.value.details()
                assert details == "the request is not a valid cascade.v1.RerankRequest"
            running.malformed.summary.flush()
        answer = rerank_pb2.RerankResponse.FromString(
            raw(rerank_request(count=2).SerializeToString(), timeout=5)
        )
    assert len(answer.candidates.item_ids) == 2 and servicer.calls == 1  # garbage never ran it
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert [r.getMessage().split(" answered")[0] for r in lines] == [
        "rerank: 1 malformed request",
        "rerank: 199 malformed requests",
    ]
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    assert (
        running.registry.get_sample_value(
            "cascade_malformed_requests_total", {"stage": "rerank", "rpc": f"{RERANK}/Rerank"}
        )
        == 200
    )
