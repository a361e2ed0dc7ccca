"""Per-replica health at the gateway (gateway/replicas.py): resolution, ejection of a stopped or
SIGSTOPped replica, the health probe that takes it back, all on real loopback rank servers."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from concurrent import futures

import pytest

from cascade.client import ClientSettings
from cascade.healthcheck import check
from cascade.server import free_port, serve
from cascade.telemetry import ModelMetrics, new_registry
from gateway.client import CascadeClient
from gateway.replicas import Endpoint, ReplicaPool, channel_factory, resolve
from services.rank.server import SERVER as RANK_SERVER
from services.rank.server import RankService, RankSettings, load_scorer
from tests.gateway.conftest import QUIET

pytestmark = pytest.mark.timeout(240)


def test_targets_resolve_to_every_replica():
    assert resolve("127.0.0.1:5, 127.0.0.2:6") == [
        Endpoint("127.0.0.1:5", ""),
        Endpoint("127.0.0.2:6", ""),
    ]
    assert resolve("ipv4:127.0.0.1:5,127.0.0.1:6")[1] == Endpoint("127.0.0.1:6", "")
    assert resolve("[::1]:7") == [Endpoint("[::1]:7", "")]
    # A name is resolved to all its addresses, each remembering the name (TLS checks it).
    found = resolve("dns:///localhost:8")
    assert found and all(e.server_name == "localhost" for e in found)
    assert "127.0.0.1:8" in {e.address for e in found}
    assert resolve("no-such-host.invalid:9") == []
    with pytest.raises(ValueError, match="not host:port"):
        resolve("127.0.0.1")


def rank_server(built, port: int = 0):
    settings = RankSettings(artifacts=built.artifacts, data_dir=built.data_dir, server=QUIET)
    registry = new_registry(process_metrics=False)
    service = RankService(load_scorer(settings), 2000, ModelMetrics("rank", registry))
    return serve(
        "rank", RANK_SERVER.add_servicers(service), dataclasses.replace(QUIET, port=port), registry
    )


def rank_reasons(client: CascadeClient, n: int) -> list[str]:
    reasons = []
    for _ in range(n):
        traces = {t.stage: t for t in client.recommend(2, count=5, debug=True).trace}
        reasons.append(traces["rank"].degraded_reason)
    return reasons


def test_a_dead_replica_is_ejected_probed_by_health_checks_and_taken_back(built, stack_factory):
    stack = stack_factory(breaker_failures=2, breaker_cooldown_s=0.3)
    port = stack.stages["rank"].port
    stack.stop_stage("rank")
    pool = stack.gateway.service.cascade.pools["rank"]
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        reasons = rank_reasons(client, 4)
        # Ejected after 2 failures: both calls', or one call's and one health probe's.
        assert reasons[0] == "UNAVAILABLE" and reasons[-2:] == ["CIRCUIT_OPEN"] * 2, reasons
        assert set(reasons) == {"UNAVAILABLE", "CIRCUIT_OPEN"}
        # Past the cooldown the prober health-checks it: no request pays for the probe.
        (replica,) = pool.replicas
        since, deadline = time.monotonic(), time.monotonic() + 30
        while replica.probed_at < since:
            assert time.monotonic() < deadline, "the ejected replica was never probed"
            time.sleep(0.01)
        assert rank_reasons(client, 2) == ["CIRCUIT_OPEN", "CIRCUIT_OPEN"]
        assert pool.serving() == []
        back = rank_server(built, port)  # the replica comes back on its address
        try:
            deadline = time.monotonic() + 30
            while not pool.serving() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert pool.serving() == [f"127.0.0.1:{port}"]
            assert rank_reasons(client, 3) == ["", "", ""]
        finally:
            back.stop(0)


def start_rank_process(built) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = os.environ | {
        "CASCADE_RANK_SERVER_PORT": str(port),
        "CASCADE_RANK_SERVER_METRICS_PORT": "-1",
        "CASCADE_RANK_ARTIFACTS": str(built.artifacts),
        "CASCADE_RANK_DATA_DIR": str(built.data_dir),
        "CASCADE_RANK_SERVER_RELOAD_INTERVAL_S": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.rank.server"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while check(f"127.0.0.1:{port}", timeout_s=1.0) != "SERVING":
        assert process.poll() is None and time.monotonic() < deadline, "rank did not start"
        time.sleep(0.2)
    return process, port


def test_a_sigstopped_replica_among_two_costs_a_few_requests_not_half(built, stack_factory):
    process, port = start_rank_process(built)
    try:
        stack = stack_factory()  # breaker_failures 3, cooldown 0.5 s: the gateway's defaults
        healthy = stack.stages["rank"].address
        # Re-point the gateway's rank pool at both replicas (the fixture started it with one).
        service = stack.gateway.service
        old = service.pools["rank"]
        pool = ReplicaPool(
            "rank",
            f"{healthy},127.0.0.1:{port}",
            channel_factory(ClientSettings(timeout_s=3.0)),
            3,
            0.5,
        )
        service.pools["rank"] = service.cascade.pools["rank"] = pool
        old.close()
        with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
            assert rank_reasons(client, 6) == [""] * 6  # both replicas serve
            os.kill(process.pid, signal.SIGSTOP)
            # 60 requests, 4 at a time: with round robin about 30 would wait out rank's budget.
            with futures.ThreadPoolExecutor(4) as pool_of_clients:
                runs = list(pool_of_clients.map(lambda _: rank_reasons(client, 15), range(4)))
            reasons = [r for run in runs for r in run]
            assert len(reasons) == 60  # every request answered (no failure)
            degraded = sum(r != "" for r in reasons)
            assert set(reasons) <= {"", "DEADLINE_EXCEEDED"}
            assert degraded <= 6, reasons
            # Its health probes time out too: ejected without another request paying for it.
            deadline = time.monotonic() + 30
            while pool.serving() != [healthy] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert pool.serving() == [healthy]
            assert rank_reasons(client, 4) == [""] * 4
            os.kill(process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while len(pool.serving()) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sorted(pool.serving()) == sorted([healthy, f"127.0.0.1:{port}"])
            assert rank_reasons(client, 4) == [""] * 4
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=30)


def test_rotated_client_certificates_give_the_replicas_new_channels(tmp_path):
    """The gateway's client files are replaced (a Secret update): the next refresh builds every
    replica's channel from the new files, keeping each replica's health record."""
    import shutil

    from cascade.certs import make_certificates
    from cascade.healthcheck import check as health
    from cascade.server import ServerSettings
    from cascade.v1 import rerank_pb2_grpc
    from tests.cascade.test_server import rerank_request, start_fake

    ours, theirs = make_certificates(tmp_path / "ours"), make_certificates(tmp_path / "theirs")
    live = tmp_path / "live"
    shutil.copytree(ours.folder, live)
    server, _ = start_fake(
        ServerSettings(
            tls_cert=live / "server.pem",
            tls_key=live / "server-key.pem",
            tls_client_ca=live / "ca.pem",
        )
    )
    files = [live / "ca.pem", live / "gateway.pem", live / "gateway-key.pem"]
    client = ClientSettings(timeout_s=5.0, tls_ca=files[0], tls_cert=files[1], tls_key=files[2])
    pool = ReplicaPool(
        "rerank",
        server.address,
        channel_factory(client),
        3,
        0.5,
        resolve_interval_s=3600,
        credential_files=files,
    )
    try:
        (replica,) = pool.replicas
        rerank_pb2_grpc.RerankStub(replica.channel).Rerank(rerank_request(count=2), timeout=5)
        for name in ("server-key.pem", "server.pem", "ca.pem", "gateway-key.pem", "gateway.pem"):
            shutil.copy(theirs.folder / name, live / f"{name}.new")
            os.replace(live / f"{name}.new", live / name)  # both sides move to the new CA
        pool.refresh()
        (rotated,) = pool.replicas
        assert rotated is not replica and rotated.breaker is replica.breaker
        rerank_pb2_grpc.RerankStub(rotated.channel).Rerank(rerank_request(count=2), timeout=5)
        # The old files would no longer be let in: the new channel really uses the new ones.
        old_files = (ours.ca, ours.gateway, ours.gateway_key)
        assert health(server.address, "", 5.0, *old_files).startswith("ERROR")
    finally:
        pool.close()
        server.stop(0)
