"""The traffic the Prometheus check drives through a running stack, faults included.

Recommend for random users with Feedback on what they were shown, plus what makes the other
series exist: bad requests (INVALID_ARGUMENT), requests with a deadline too short for the cascade
(degraded answers, NO_BUDGET fallbacks) and, on a stack this process started, one stage paused
with SIGSTOP past its budget (DEADLINE_EXCEEDED fallbacks, a failed scrape: `up == 0`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from app.stack import Stack
from gateway.client import CascadeClient

TINY_DEADLINE_S = 0.004  # less than one stage hop plus the gateway's margin: it must degrade


@dataclass
class TrafficReport:
    seconds: float = 0.0
    recommend: Counter = field(default_factory=Counter)  # outcome -> count
    feedback_events: Counter = field(default_factory=Counter)  # accepted / rejected
    paused: dict = field(default_factory=dict)  # stage, pid, seconds

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 1),
            "recommend": dict(sorted(self.recommend.items())),
            "feedback_events": dict(sorted(self.feedback_events.items())),
            "paused": self.paused,
        }


class Traffic:
    """Closed-loop traffic from one background thread until `stop()`."""

    def __init__(self, stack: Stack, n_users: int, seed: int = 0):
        self.client = CascadeClient(stack.address("gateway"), timeout_s=2.0)
        self.n_users = n_users
        self.rng = np.random.default_rng(seed)
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="check-traffic", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> Traffic:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> TrafficReport:
        self._stop.set()
        self._thread.join(10)
        self.client.close()
        self.report.seconds = time.perf_counter() - self._started
        return self.report

    def pause(self, stack: Stack, stage: str, seconds: float) -> None:
        """SIGSTOP the stage's process for `seconds`, then SIGCONT (always)."""
        pid = next(s.pid for s in stack.services if s.name == stage)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.report.paused = {"stage": stage, "pid": pid, "seconds": seconds}

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            user = int(self.rng.integers(1, self.n_users + 1))
            if n % 25 == 0:
                self._recommend(-1)  # INVALID_ARGUMENT: user_id must be >= 0
            elif n % 10 == 0:
                self._recommend(user, timeout_s=TINY_DEADLINE_S)
            else:
                page = self._recommend(user)
                if page is not None and n % 4 == 0 and len(page.items.item_ids):
                    item = int(page.items.item_ids[0])
                    self._feedback([(user, item, "play"), (user, 10**9, "play")])  # one unknown

    def _recommend(self, user: int, timeout_s: float | None = None):
        try:
            page = self.client.recommend(user, count=10, timeout_s=timeout_s)
        except grpc.RpcError as error:
            self._count(self.report.recommend, error.code().name)
            return None
        self._count(self.report.recommend, "degraded" if page.degraded else "ok")
        return page

    def _feedback(self, events: list) -> None:
        try:
            answer = self.client.feedback(events)
        except grpc.RpcError as error:
            self._count(self.report.feedback_events, f"call {error.code().name}")
            return
        self._count(self.report.feedback_events, "accepted", answer.accepted)
        self._count(self.report.feedback_events, "rejected", len(answer.rejected))

    def _count(self, counter: Counter, key: str, n: int = 1) -> None:
        with self._lock:
            counter[key] += n
