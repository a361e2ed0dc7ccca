"""Keeps the local stack up: a service process that dies is started again on its own ports, the way
compose's `restart: on-failure` and a Kubernetes restart policy do, with exponential backoff.

`cascade up` starts it in the background (app.stack.spawn_supervisor: `python -m app.supervisor
--run-dir .cascade`); it
reads the stack from RUN_DIR/stack.json, writes its pid and metrics port to RUN_DIR/supervisor.json,
logs each exit and restart to RUN_DIR/supervisor.log and counts restarts in the metric
cascade_supervisor_restarts_total{service}. `cascade down` stops it before the services
(app.stack.stop_supervisor).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from app import stack
from cascade.files import write_atomic
from cascade.telemetry import new_registry, start_metrics_server

log = logging.getLogger("app.supervisor")
STATE_FILE = stack.SUPERVISOR_STATE_FILE
LOG_FILE = stack.SUPERVISOR_LOG_FILE


@dataclass(frozen=True)
class RestartPolicy:
    initial_backoff_s: float = 0.5  # wait before the first restart of a service
    max_backoff_s: float = 30.0  # the wait doubles per restart up to this
    stable_s: float = 30.0  # a service up this long starts over at the initial backoff
    poll_s: float = 0.2

    def backoff_s(self, restarts: int) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * 2**restarts)


class Supervisor:
    """Watches the services of the stack recorded in `run_dir`; `check` does one pass."""

    def __init__(
        self,
        run_dir: Path,
        policy: RestartPolicy | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.run_dir, self.clock = Path(run_dir), clock
        self.policy = RestartPolicy() if policy is None else policy
        self.stack = load_stack(self.run_dir)
        self.registry = new_registry(process_metrics=False) if registry is None else registry
        self.restarts = Counter(
            "cascade_supervisor_restarts",
            "Service processes the supervisor started again after they exited, by service.",
            ["service"],
            registry=self.registry,
        )
        now = clock()
        self.recent = {s.name: 0 for s in self.stack.services}  # restarts since last stable
        self.started_at = {s.name: now for s in self.stack.services}
        self.due: dict[str, float] = {}  # service -> when its restart is due

    def check(self) -> list[str]:
        """Restarts every service whose backoff has passed; returns their names."""
        now, restarted = self.clock(), []
        for index, service in enumerate(self.stack.services):
            name = service.name
            if stack._alive(service.pid):
                if now - self.started_at[name] >= self.policy.stable_s:
                    self.recent[name] = 0
                continue
            if name not in self.due:
                delay = self.policy.backoff_s(self.recent[name])
                self.due[name] = now + delay
                log.warning("%s (pid %d) exited; restarting in %.1f s", name, service.pid, delay)
                continue
            if now < self.due[name]:
                continue
            del self.due[name]
            new = stack.relaunch(self.stack, index)
            self.recent[name] += 1
            self.started_at[name] = now
            self.restarts.labels(name).inc()
            log.warning("%s restarted as pid %d on port %d", name, new.pid, new.port)
            restarted.append(name)
        return restarted

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.policy.poll_s):
            self.check()


def load_stack(run_dir: Path) -> stack.Stack:
    """The stack `cascade up` recorded in run_dir (services, and the environment each got)."""
    state = json.loads((Path(run_dir) / stack.STATE_FILE).read_text())
    services = [stack.Service(**s) for s in state["services"]]
    return stack.Stack(
        Path(run_dir), services, state["bundle"], state["dataset"], state.get("environments", {})
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade"))
    parser.add_argument("--metrics-port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--initial-backoff", type=float, default=RestartPolicy.initial_backoff_s)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    supervisor = Supervisor(args.run_dir, RestartPolicy(initial_backoff_s=args.initial_backoff))
    metrics = start_metrics_server(supervisor.registry, args.metrics_port, "127.0.0.1")
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())
    state = {"pid": os.getpid(), "metrics_port": metrics.port}
    write_atomic(args.run_dir / STATE_FILE, json.dumps(state))
    names = ", ".join(s.name for s in supervisor.stack.services)
    log.info("supervising %s; metrics on port %d", names, metrics.port)
    supervisor.run(stop_requested)
    metrics.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
