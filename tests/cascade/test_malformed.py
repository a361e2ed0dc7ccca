"""The malformed-request summary on an injected clock: one line per interval, with its count."""

from __future__ import annotations

import logging

from cascade.malformed import MalformedLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_one_line_at_once_and_one_with_the_rest_when_flushed(caplog):
    clock = FakeClock()
    summary = MalformedLog("gateway", interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="cascade.malformed"):
        for _ in range(1000):
            summary.record("cascade.v1.Gateway/Recommend", "Error parsing message")
            clock.now += 0.001
        assert summary.lines == 1  # the rest wait for the interval's end
        clock.now += 10.0
        summary.flush()
        summary.flush()  # nothing pending: no line
        clock.now += 10.0
        summary.record("cascade.v1.Gateway/Feedback", "truncated")  # after a quiet interval
        summary.close()
    counts = [r.getMessage().split(" malformed")[0] for r in caplog.records]
    assert counts == ["gateway: 1", "gateway: 999", "gateway: 1"]
    assert "last: cascade.v1.Gateway/Feedback: truncated" in caplog.records[-1].getMessage()


def test_the_timer_writes_the_pending_count_without_another_request(caplog):
    summary = MalformedLog("rank", interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="cascade.malformed"):
        summary.record("cascade.v1.Rank/Rank", "x")
        summary.record("cascade.v1.Rank/Rank", "x")
        summary.record("cascade.v1.Rank/Rank", "x")
        timer = summary._timer
        assert timer is not None
        timer.join(timeout=5)
    assert summary.lines == 2
    assert caplog.records[-1].getMessage().startswith("rank: 2 malformed requests")
    assert summary._timer is None
