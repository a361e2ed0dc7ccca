"""The gateway's timing rules with the clock injected: the breaker's cooldown and single probe,
and the budget's split across stages, checked to the exact second instead of by sleeping."""

from __future__ import annotations

import threading

import pytest

from gateway.pipeline import STAGES, Breaker, Budget


class FakeClock:
    """A time source that moves only when the test says so."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def failing(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record(False)


def test_the_breaker_opens_after_threshold_failures_in_a_row():
    clock = FakeClock()
    breaker = Breaker(threshold=3, cooldown_s=10.0, clock=clock)
    failing(breaker, 2)
    assert breaker.allow()
    breaker.record(True)  # a success resets the count: two more failures do not open it
    failing(breaker, 2)
    assert breaker.allow()
    breaker.record(False)  # the third in a row
    assert not breaker.allow()
    assert breaker.open_until == 1010.0


def test_the_cooldown_ends_exactly_then_one_probe_closes_the_breaker_on_success():
    clock = FakeClock()
    breaker = Breaker(threshold=1, cooldown_s=10.0, clock=clock)
    failing(breaker, 1)
    clock.advance(9.999)
    assert not breaker.allow()
    clock.advance(0.001)  # exactly open_until: the cooldown is over
    assert breaker.allow()  # the probe
    assert breaker.probing and not breaker.allow()  # nobody else while it is out
    breaker.record(True)
    assert not breaker.probing and breaker.failures == 0
    assert all(breaker.allow() for _ in range(5))  # closed: every call goes through


def test_a_failed_probe_opens_the_breaker_for_another_full_cooldown():
    clock = FakeClock()
    breaker = Breaker(threshold=2, cooldown_s=5.0, clock=clock)
    failing(breaker, 2)
    clock.advance(7.0)
    assert breaker.allow()
    breaker.record(False)
    assert breaker.open_until == 1012.0  # from the probe's failure, not from the first opening
    clock.advance(4.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.allow()


def test_a_probe_without_a_verdict_lets_the_next_call_probe():
    """A deadline too short to judge the stage (record(None)) neither closes nor reopens it."""
    clock = FakeClock()
    breaker = Breaker(threshold=1, cooldown_s=5.0, clock=clock)
    failing(breaker, 1)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record(None)
    assert breaker.failures == 1 and breaker.open_until == 1005.0
    assert breaker.allow()  # still past the cooldown: the next call is the new probe
    assert not breaker.allow()


def test_threshold_zero_never_opens():
    breaker = Breaker(threshold=0, cooldown_s=5.0, clock=FakeClock())
    failing(breaker, 50)
    assert breaker.allow()


def test_two_concurrent_probes_only_one_goes_through():
    clock = FakeClock()
    breaker = Breaker(threshold=1, cooldown_s=1.0, clock=clock)
    failing(breaker, 1)
    clock.advance(1.0)
    start = threading.Barrier(8)
    allowed: list[bool] = []

    def call() -> None:
        start.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(allowed) == [False] * 7 + [True]


def test_a_late_answer_from_before_the_opening_does_not_end_the_probe():
    """Calls let through while the breaker was closed may answer during the probe: their
    outcome counts, but only the probe's own thread ends the probe (else a second one gets in)."""
    clock = FakeClock()
    breaker = Breaker(threshold=1, cooldown_s=1.0, clock=clock)
    assert breaker.allow()  # an old call, still in flight (another thread)
    failing(breaker, 1)  # opens the breaker
    clock.advance(1.0)
    probe_allowed = threading.Event()
    release = threading.Event()

    def probe() -> None:
        assert breaker.allow()
        probe_allowed.set()
        release.wait(5)
        breaker.record(True)

    prober = threading.Thread(target=probe)
    prober.start()
    assert probe_allowed.wait(5)
    stale = threading.Thread(target=breaker.record, args=(None,))
    stale.start()
    stale.join(5)
    assert breaker.probing and not breaker.allow()  # still one probe at a time
    release.set()
    prober.join(5)
    assert not breaker.probing and breaker.allow()


def test_the_budget_splits_what_is_left_by_the_shares_of_the_stages_still_to_run():
    clock = FakeClock()
    shares = {"recall": 0.3, "prerank": 0.15, "rank": 0.4, "rerank": 0.15}
    budget = Budget(1.0, shares, clock=clock)
    assert budget.for_stage("recall") == pytest.approx(0.3)
    clock.advance(0.1)  # recall took 0.1 s of its 0.3
    # 0.9 s left for prerank, rank, rerank (shares 0.15 : 0.4 : 0.15 of 0.7)
    assert budget.for_stage("prerank") == pytest.approx(0.9 * 0.15 / 0.7)
    clock.advance(0.2)
    assert budget.for_stage("rank") == pytest.approx(0.7 * 0.4 / 0.55)
    clock.advance(0.6)
    assert budget.for_stage("rerank") == pytest.approx(0.1)  # the last stage gets all the rest
    clock.advance(0.2)
    assert budget.left() == pytest.approx(-0.1) and budget.for_stage("rerank") < 0


def test_a_negative_total_is_an_empty_budget():
    clock = FakeClock()
    budget = Budget(-3.0, dict.fromkeys(STAGES, 1.0), clock=clock)
    assert budget.left() == 0.0 and budget.for_stage("recall") == 0.0
