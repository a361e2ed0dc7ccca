"""A stage started the way its pod starts it (the manifest's command, settings file and env) answers
the kubelet's gRPC health probe, and on SIGTERM drains as the manifests promise: NOT_SERVING but
still answering for shutdown_delay_s, then an exit well inside terminationGracePeriodSeconds.

Loopback only: the pod's 0.0.0.0 and fixed ports are replaced by 127.0.0.1 and free ports, and
its shared Redis store by a real redis-server on a loopback port, and the cascade-tls Secret's
files by certificates from `cascade certs`. As in the pod, the gRPC port speaks mutual TLS and the
kubelet probes the plaintext health-only probe port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cascade.certs import make_certificates
from cascade.healthcheck import check
from cascade.server import free_port, read_port_file
from deploy import k8s_checks as checks
from deploy.k8s_validate import render

STAGE = "rerank"  # the cheapest stage to build a bundle for


@pytest.fixture(scope="module")
def rerank_bundle(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("k8s-pod")
    data, artifacts = root / "data", root / "artifacts"
    run = [sys.executable, "-m", "app.cli", "data", "--source", "synthetic", "--users", "100"]
    run += ["--items", "60", "--impressions-per-user", "20", "--data-dir", str(data)]
    subprocess.run(run, check=True, capture_output=True, timeout=120)
    build = [sys.executable, "-m", "services.rerank.train", "--dataset", "synthetic"]
    build += ["--data-dir", str(data), "--artifacts", str(artifacts), "--version", "v1"]
    subprocess.run(build, check=True, capture_output=True, timeout=120)
    return artifacts, data


def test_pod_command_serves_health_and_drains_on_sigterm(rerank_bundle, tmp_path, redis_url):
    artifacts, data = rerank_bundle
    objects = render()
    workload = next(w for w in checks.workloads(objects)[0] if w.stage.name == STAGE)
    server = workload.settings.server
    termination = workload.pod["terminationGracePeriodSeconds"]

    command = list(workload.container["command"])
    config = command[command.index("--config") + 1]
    config_map = checks.of_kind(objects, "ConfigMap")[0]
    settings_file = tmp_path / Path(config).name
    settings_file.write_text(config_map["data"][Path(config).name])
    profile_file = tmp_path / "profile.toml"  # the profile every container reads, as mounted
    profile_file.write_text(config_map["data"]["profile.toml"])
    assert workload.env["CASCADE_PROFILE_FILE"] == "/etc/cascade/profile.toml"
    command[command.index("--config") + 1] = str(settings_file)
    assert command[0] == "python"
    command[0] = sys.executable

    prefix = workload.stage.env_prefix
    port_file = tmp_path / "ports.json"
    probe_port = free_port()
    certs = make_certificates(tmp_path / "tls")
    secret = {"ca.crt": certs.ca, "server.crt": certs.server, "server.key": certs.server_key}
    mounted = {  # the Secret's files where the pod would see them -> the ones made here
        name: str(secret[Path(value).name])
        for name, value in workload.env.items()
        if value.startswith("/etc/cascade/tls/")
    }
    assert set(mounted) == {f"{prefix}SERVER_TLS_{n}" for n in ("CERT", "KEY", "CLIENT_CA")}
    env = (
        os.environ
        | workload.env
        | mounted
        | {
            f"{prefix}SERVER_PROBE_PORT": str(probe_port),
            f"{prefix}SERVER_HOST": "127.0.0.1",
            f"{prefix}SERVER_PORT": "0",  # ephemeral; the server reports it in its port file
            f"{prefix}SERVER_METRICS_PORT": "0",
            f"{prefix}SERVER_PORT_FILE": str(port_file),
            f"{prefix}ARTIFACTS": str(artifacts),
            f"{prefix}DATA_DIR": str(data),
            f"{prefix}BUNDLE": "v1",
            f"{prefix}STORE": redis_url,
            "CASCADE_PROFILE_FILE": str(profile_file),
        }
    )
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{probe_port}"  # what the kubelet probes
    try:
        deadline = time.monotonic() + 60
        while (ports := read_port_file(port_file)) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no port after 60 s:\n" + log.read_text()
            time.sleep(0.1)
        port = ports[0]
        while check(address, timeout_s=1.0) != "SERVING":
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not SERVING after 60 s:\n" + log.read_text()
            time.sleep(0.2)
        # The gRPC port itself speaks mutual TLS only: plaintext gets no answer there.
        assert check(f"127.0.0.1:{port}", timeout_s=1.0).startswith("ERROR")
        tools = (certs.ca, certs.tools, certs.tools_key)
        assert check(f"127.0.0.1:{port}", "", 5.0, *tools) == "SERVING"

        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        statuses = []
        while process.poll() is None and time.monotonic() - sent < termination:
            statuses.append((time.monotonic() - sent, check(address, timeout_s=1.0)))
            time.sleep(0.2)
        exited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)

    assert process.returncode == 0, log.read_text()
    not_serving = [t for t, s in statuses if s == "NOT_SERVING"]
    # Still answering, as NOT_SERVING, from within a second of SIGTERM until the delay is over.
    assert not_serving and not_serving[0] < 1.0, statuses
    assert not_serving[-1] >= server.shutdown_delay_s - 1.0, statuses
    assert server.shutdown_delay_s <= exited < termination, (exited, statuses)
