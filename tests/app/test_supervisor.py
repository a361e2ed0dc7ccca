"""The supervisor: a killed stage is started again on its port without a hand, says so in its log
and its metric, and `down` stops the supervisor before the services."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

from app import stack, supervisor
from app.supervisor import RestartPolicy
from tests.app.test_stack import tiny_bundle  # noqa: F401 (the module's fixture)


def test_backoff_doubles_per_restart_up_to_its_maximum():
    policy = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.backoff_s(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_killed_stage_is_restarted_by_the_supervisor(tiny_bundle, tmp_path):  # noqa: F811
    artifacts, data = tiny_bundle
    run_dir = tmp_path / "run"
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "bundle": "v1"}
    running = stack.up(
        run_dir=run_dir,
        train=False,
        only=("rerank",),
        supervise=True,
        quiet=True,
        ports=dict.fromkeys(stack.DEFAULT_PORTS, 0),
        metrics_ports=dict.fromkeys(stack.DEFAULT_PORTS, 0),
        **options,
    )
    try:
        state = json.loads((run_dir / supervisor.STATE_FILE).read_text())
        (old,) = running.services
        os.killpg(old.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        new = old
        while time.monotonic() < deadline:
            (new,) = supervisor.load_stack(run_dir).services
            if new.pid != old.pid and stack._serving(new.address):
                break
            time.sleep(0.2)
        assert new.pid != old.pid and new.port == old.port
        assert stack._serving(new.address)
        log = (run_dir / supervisor.LOG_FILE).read_text()
        assert f"rerank (pid {old.pid}) exited" in log
        assert f"rerank restarted as pid {new.pid} on port {old.port}" in log
        url = f"http://127.0.0.1:{state['metrics_port']}/metrics"
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'cascade_supervisor_restarts_total{service="rerank"} 1.0' in metrics
    finally:
        stack.down(run_dir, quiet=True)
    assert not stack._alive(state["pid"]) and not stack._alive(new.pid)
    assert not (run_dir / supervisor.STATE_FILE).exists()
