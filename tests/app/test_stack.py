"""The local stack: real service processes on free loopback ports, started and always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from app import stack
from cascade.artifacts import clone, publish
from cascade.eventlog import FileEventLog, LogSettings
from gateway.impressions import ImpressionWriter
from gateway.pipeline import GatewayMetrics
from tests.gateway.test_impressions import shown

STAGE_TRAINERS = (
    ("services.recall.train",),
    ("training.rank_train", "--max-epochs", "1"),
    ("services.rerank.train",),
)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """A small synthetic world and every stage trained on it (about 15 s, in subprocesses)."""
    root = tmp_path_factory.mktemp("stack")
    data, artifacts = root / "data", root / "artifacts"
    run = [sys.executable, "-m", "app.cli", "data", "--source", "synthetic", "--users", "200"]
    run += ["--items", "100", "--impressions-per-user", "30", "--data-dir", str(data)]
    subprocess.run(run, check=True, capture_output=True)
    common = ["--dataset", "synthetic", "--data-dir", str(data), "--artifacts", str(artifacts)]
    for module, *options in STAGE_TRAINERS:
        command = [sys.executable, "-m", module, *common, "--version", "v1", *options]
        subprocess.run(command, check=True, capture_output=True)
    return artifacts, data


def _processes_alive(services: list[stack.Service]) -> list[str]:
    return [s.name for s in services if stack._alive(s.pid)]


def test_stack_serves_a_recommendation_and_stops_cleanly(tiny_bundle, tmp_path):
    artifacts, data = tiny_bundle
    run_dir = tmp_path / "run"
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "bundle": "v1"}
    with stack.running_stack(run_dir, train=False, **options) as running:
        names = [s.name for s in running.services]
        assert names[-1] == "gateway" and {"recall", "rank", "rerank"} <= set(names)
        ports = [s.port for s in running.services] + [s.metrics_port for s in running.services]
        assert len(set(ports)) == len(ports) and all(p > 0 for p in ports)
        assert (run_dir / stack.STATE_FILE).exists()
        from gateway.client import CascadeClient

        with CascadeClient(running.address("gateway"), timeout_s=5.0) as client:
            answer = client.recommend(5, count=5, debug=True)
        assert len(answer.items.item_ids) == 5
        assert all(0 < item < 101 for item in answer.items.item_ids)
        assert [t.stage for t in answer.trace][0] == "recall"
        services = running.services
    assert _processes_alive(services) == []
    assert not (run_dir / stack.STATE_FILE).exists()


def test_a_service_that_cannot_start_is_reported_with_its_log_and_the_rest_stop(
    tiny_bundle, tmp_path
):
    artifacts, data = tiny_bundle
    run_dir = tmp_path / "run"
    with pytest.raises(stack.StackError) as failure:
        stack.up(
            artifacts,
            data,
            "synthetic",
            run_dir,
            bundle="v1",
            train=False,
            quiet=True,
            ports=dict.fromkeys(stack.DEFAULT_PORTS, 0),
            metrics_ports=dict.fromkeys(stack.DEFAULT_PORTS, 0),
            only=("recall", "rerank"),
            extra_env={"CASCADE_RECALL_BUNDLE": "no-such-bundle"},
        )
    message = str(failure.value)
    assert message.startswith("recall exited during start-up")
    assert "no-such-bundle" in message  # the tail of recall's own log
    assert not (run_dir / stack.STATE_FILE).exists()  # rerank was stopped too


def test_health_wait_gives_up_after_its_timeout(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    log = tmp_path / "rank.log"
    log.write_text("loading the model\nstill loading\n")
    held = socket.socket()  # bound, never listening: the health check is refused throughout
    held.bind(("127.0.0.1", 0))
    service = stack.Service("rank", held.getsockname()[1], -1, sleeper.pid, str(log))
    try:
        with pytest.raises(stack.StackError, match="rank not SERVING") as failure:
            stack.wait_healthy(stack.Stack(tmp_path, [service], "v1", "tiny"), timeout_s=0.5)
        assert "still loading" in str(failure.value)
    finally:
        held.close()
        sleeper.kill()
        sleeper.wait()


def test_waiting_for_impressions_returns_once_the_gateway_logged_every_answer(tmp_path):
    """The wait reads the gateway's pending gauge over its metrics port, as the simulation's
    daily retrain does from another process; the writer lingers 0.5 s before it writes."""
    registry = CollectorRegistry()
    event_log = FileEventLog(tmp_path / "log", LogSettings())
    writer = ImpressionWriter(event_log, GatewayMetrics(registry), linger_s=0.5)
    httpd, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    gateway = stack.Service("gateway", 1, httpd.server_port, os.getpid(), str(tmp_path / "g.log"))
    try:
        for name in ("a", "b", "c"):
            writer.submit(shown(name))
        stack.wait_impressions_logged(stack.Stack(tmp_path, [gateway], "v1", "tiny"), 10.0)
        rows = event_log.read_impressions().to_pylist()
        assert [r["request_id"] for r in rows] == ["a", "b", "c"]
    finally:
        httpd.shutdown()
        writer.close()
        event_log.close()


def test_down_leaves_processes_it_did_not_start(tmp_path, capsys):
    assert stack.down(tmp_path) == 0
    assert "no stack recorded" in capsys.readouterr().out
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        service = stack.Service("rank", 1, 2, sleeper.pid, str(tmp_path / "rank.log"))
        stack._save(stack.Stack(tmp_path, [service], "v1", "tiny"))
        assert stack.down(tmp_path, quiet=True) == 0  # a recycled pid is not ours
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_prerank_only_runs_when_built(tiny_bundle):
    artifacts, _ = tiny_bundle
    assert stack.bundle_dataset(artifacts, "v1") == "synthetic"
    assert stack.bundle_dataset(artifacts, "missing") is None
    assert stack.prerank_available(artifacts, "v1") is False  # no prerank component here


def test_a_published_bundle_is_hot_swapped_without_a_failed_request(tiny_bundle, tmp_path):
    artifacts, data = tiny_bundle
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / "v1").symlink_to(artifacts / "v1")
    publish(root, "v1")
    options = {"artifacts": root, "data_dir": data, "dataset": "synthetic", "bundle": "current"}
    with stack.running_stack(tmp_path / "run", train=False, **options) as running:
        from gateway.client import CascadeClient

        with CascadeClient(running.address("gateway"), timeout_s=5.0) as client:
            first = client.recommend(5, count=5, debug=True)  # any failure below raises
            assert {t.model_version for t in first.trace if t.model_version} == {"v1"}
            clone(root, "v1", "v2")
            publish(root, "v2")
            deadline = time.monotonic() + 30  # services poll every 2 s, then load the bundle
            while time.monotonic() < deadline:
                answer = client.recommend(5, count=5, debug=True)
                assert list(answer.degraded_stages) == list(first.degraded_stages)
                versions = {t.stage: t.model_version for t in answer.trace if t.model_version}
                if set(versions.values()) == {"v2"}:
                    break
            assert set(versions) == {t.stage for t in first.trace if t.model_version}
            assert set(versions.values()) == {"v2"}


def test_a_killed_stage_restarts_on_its_port_and_serves_again(tiny_bundle, tmp_path):
    artifacts, data = tiny_bundle
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "bundle": "v1"}
    with stack.running_stack(tmp_path / "run", train=False, only=("rank",), **options) as running:
        (before,) = running.services
        os.kill(before.pid, signal.SIGKILL)
        after = stack.restart(running, "rank", timeout_s=60)
        assert after.port == before.port and after.pid != before.pid
        assert stack._serving(after.address)
        saved = json.loads((tmp_path / "run" / stack.STATE_FILE).read_text())
        assert [s["pid"] for s in saved["services"]] == [after.pid]


def test_the_redis_store_starts_with_the_stack_is_shared_and_stops_with_it(
    tiny_bundle, tmp_path, redis_binary
):
    import redis

    artifacts, data = tiny_bundle
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "bundle": "v1"}
    with stack.running_stack(tmp_path / "run", train=False, store="redis", **options) as running:
        from gateway.client import CascadeClient

        (server,) = [s for s in running.services if s.name == stack.REDIS]
        url = f"redis://127.0.0.1:{server.port}/0"
        names = ("gateway", "recall", "rank")
        assert {running.environments[n][f"CASCADE_{n.upper()}_STORE"] for n in names} == {url}
        with CascadeClient(running.address("gateway"), timeout_s=5.0) as client:
            played = client.recommend(5, count=5).items.item_ids[0]
            assert client.feedback([(5, played, "play")]).accepted == 1
            assert played not in client.recommend(5, count=5).items.item_ids
        plays = redis.Redis.from_url(url).zrange("cascade:synthetic:u:{5}:plays", 0, -1)
        assert [int(m.rsplit(b":", 1)[1]) for m in plays] == [played]
        services = running.services
    assert _processes_alive(services) == []
    assert (tmp_path / "run" / stack.REDIS / "appendonlydir").is_dir()  # the AOF stays on disk


def test_the_stack_runs_with_tls_at_the_gateway_and_mutual_tls_between_stages(
    tiny_bundle, tmp_path
):
    from gateway.client import CascadeClient

    artifacts, data = tiny_bundle
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "bundle": "v1"}
    with stack.running_stack(tmp_path / "run", train=False, tls=True, **options) as running:
        ca = running.certs / "ca.pem"
        with CascadeClient(running.address("gateway"), timeout_s=5.0, tls_ca=ca) as client:
            answer = client.recommend(5, count=5, debug=True)
        assert len(answer.items.item_ids) == 5
        # Every running stage answered over mutual TLS (a refused handshake degrades a stage).
        assert set(answer.degraded_stages) <= {"prerank"} - {s.name for s in running.services}
        logs = {s.name: Path(s.log).read_text() for s in running.services}
        assert all("transport mutual TLS" in logs[s] for s in logs if s != "gateway")
        assert "transport TLS" in logs["gateway"] and "over mutual TLS" in logs["gateway"]
        assert all("reflection on" in text for text in logs.values())  # the local stack only
        with CascadeClient(running.address("gateway"), timeout_s=2.0) as plaintext:
            with pytest.raises(Exception, match="UNAVAILABLE"):
                plaintext.recommend(5, count=5)


def _cascade(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv], capture_output=True, text=True, timeout=240
    )


def test_up_on_a_running_stack_says_so_and_keeps_it_unless_asked_to_restart(tiny_bundle, tmp_path):
    artifacts, data = tiny_bundle
    run_dir = tmp_path / "run"
    up = ["up", "--dataset", "synthetic", "--data-dir", str(data), "--artifacts", str(artifacts)]
    up += ["--bundle", "v1", "--base-port", "0", "--metrics-base-port", "0"]
    up += ["--no-supervise", "--run-dir", str(run_dir)]
    try:
        first = _cascade(*up)
        assert first.returncode == 0, first.stderr
        assert "ask it: cascade recommend --user 196 --target 127.0.0.1:" in first.stdout
        assert f"stop it: cascade down --run-dir {run_dir}" in first.stdout
        started = stack.running(run_dir)
        assert started is not None and started.has("gateway")
        logs = {s.log: Path(s.log).read_bytes() for s in started.services}
        assert any(logs.values())  # the services have logged their start-up

        again = _cascade(*up)
        assert again.returncode == 0, again.stderr
        assert "already running: left as it is" in again.stdout
        assert "cascade up --restart" in again.stdout
        kept = stack.running(run_dir)
        assert [s.pid for s in kept.services] == [s.pid for s in started.services]
        assert {s.log: Path(s.log).read_bytes() for s in kept.services} == logs

        restarted = _cascade(*up, "--restart")
        assert restarted.returncode == 0, restarted.stderr
        assert "already running" not in restarted.stdout
        fresh = stack.running(run_dir)
        assert not {s.pid for s in fresh.services} & {s.pid for s in started.services}
        assert _processes_alive(started.services) == []
    finally:
        stack.down(run_dir, quiet=True)
    assert stack.running(run_dir) is None


def test_a_recorded_stack_whose_processes_are_gone_is_not_running(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    service = stack.Service("gateway", 1, 1, gone.pid, str(tmp_path / "gateway.log"))
    stack._save(stack.Stack(tmp_path, [service], "v1", "synthetic"))
    assert stack.running(tmp_path) is None
    assert stack.running(tmp_path / "nothing-here") is None


def test_the_demo_prints_tables_with_a_header_and_a_legend(tiny_bundle, tmp_path, capsys):
    from app.demo import run_demo
    from cascade.data import load_dataset
    from gateway.client import CascadeClient

    artifacts, data = tiny_bundle
    items = load_dataset("synthetic", data).items
    titles = dict(zip(items["item_id"].tolist(), items["title"].tolist(), strict=True))
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "bundle": "v1"}
    with stack.running_stack(tmp_path / "run", train=False, **options) as running:
        with CascadeClient(running.address("gateway"), timeout_s=10.0) as client:
            assert run_demo(client, titles, [5, 6], count=5)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("score: the last stage's score; found by: the recall")
    headers = [line for line in out.splitlines() if line.split()[:2] == ["#", "item"]]
    assert len(headers) == 3  # users 5 and 6, then user 5 again
    (changed,) = [line for line in out.splitlines() if line.startswith("changed: ")]
    left = int(changed.split()[1])
    assert f"{left} item left the list" in changed if left == 1 else "items left" in changed
    assert left >= 1  # the played item left


def test_up_publishes_the_newest_bundle_of_its_dataset_instead_of_training_again(
    tiny_bundle, tmp_path, monkeypatch
):
    import shutil

    from cascade.artifacts import BundleWriter

    source, data = tiny_bundle
    artifacts = tmp_path / "artifacts"
    shutil.copytree(source / "v1", artifacts / "v1")  # a complete synthetic bundle
    partial = BundleWriter(artifacts, "v2-partial")  # newer, but training stopped after recall
    partial.set_component("recall", {"dataset": "synthetic"})
    partial.commit()
    other = BundleWriter(artifacts, "other")  # another dataset's, published last
    for component in ("recall", "rank", "rerank"):
        other.set_component(component, {"dataset": "tiny-music"})
    other.commit()
    publish(artifacts, "other")

    def no_training(command, **_):
        raise AssertionError(f"ran {command}")

    monkeypatch.setattr(stack.subprocess, "run", no_training)
    stack.ensure_bundle(artifacts, data, "synthetic")
    assert stack.bundle_dataset(artifacts) == "synthetic"
    assert (artifacts / "current").resolve() == (artifacts / "v1").resolve()
    assert stack.latest_bundle(artifacts, "ml-100k") is None  # none: `up` would train
