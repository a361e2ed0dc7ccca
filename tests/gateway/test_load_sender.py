"""The fixed-rate senders the load benchmarks use (bench/sender.py), against a real gateway:
every request of the schedule is sent once, by the sender it belongs to, and timed from its due
time, so a sender's own lag is part of the latency and reported beside it."""

from __future__ import annotations

import numpy as np

from bench import sender
from gateway.admission import AdmissionSettings


def test_the_senders_split_one_schedule_and_time_it_from_the_due_times(stack_factory):
    # The senders are under test, not admission: on a busy machine its adaptive limit may
    # refuse a burst of 20, which says nothing about how the senders split and time it.
    stack = stack_factory(admission=AdmissionSettings(enabled=False))
    users = np.array([2, 3, 0, 5])
    records, seconds = sender.fixed_rate(
        stack.gateway.address, users, rate=40.0, seconds=0.5, timeout_s=5.0, processes=2
    )
    assert [r["i"] for r in records] == list(range(20))  # each request once, in due order
    assert {r["code"] for r in records} == {"OK"}
    for r in records:
        assert r["latency_ms"] >= r["sent_ms"] > 0  # from the due time >= from the send
    assert 0.45 < seconds < 10  # the last one was due at 0.475 s
    # Debug traces come back when asked for: the per-stage latencies of each answer.
    traced, _ = sender.fixed_rate(stack.gateway.address, users, 10.0, 0.2, 5.0, debug=True)
    assert {"recall", "rank", "rerank"} <= set(traced[0]["stages"])
