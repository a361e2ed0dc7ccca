"""The container health probe against a real server on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cascade.healthcheck import check, main
from cascade.server import RunningServer, ServerSettings, serve

pytestmark = pytest.mark.timeout(30)
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "cascade.v1.Probe"


@pytest.fixture
def running() -> Iterator[RunningServer]:
    def add(server: grpc.Server) -> list[str]:
        return [SERVICE]  # no servicer: the health service alone is what the probe talks to

    server = serve("probe", add, ServerSettings(metrics_port=-1))
    yield server
    server.stop(0)


def test_serving_server_exits_zero(running, capsys):
    assert main([running.address]) == 0
    assert main([running.address, "--service", SERVICE]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{running.address} (server): SERVING"


def test_not_serving_and_unknown_service_exit_one(running, capsys):
    running.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main([running.address, "--service", SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out
    assert check(running.address, "cascade.v1.Nothing") == "ERROR: NOT_FOUND"
    assert main([running.address, "--service", "cascade.v1.Nothing"]) == 1


def test_shutdown_turns_the_probe_unhealthy(running):
    running.health.enter_graceful_shutdown()  # what stop() does first
    assert check(running.address) == "NOT_SERVING"


def test_nothing_listening_exits_one_within_the_timeout():
    with socket.socket() as held:  # bound, never listening: refused for the whole test
        held.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        assert check(address, timeout_s=0.3).startswith("ERROR: ")
        assert main([address, "--timeout", "0.3"]) == 1


def test_runs_as_a_module_like_the_compose_healthcheck(running):
    result = subprocess.run(
        [sys.executable, "-m", "cascade.healthcheck", running.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("SERVING")


def test_bad_timeout_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["127.0.0.1:1", "--timeout", "0"])
    assert exit_info.value.code == 2
