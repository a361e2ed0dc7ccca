"""The overload controllers on an injected clock: the limit grows on good latency and shrinks on
queueing, CoDel sheds only a standing queue, the quality factor falls under the gateway's own
queueing (never for latency alone) and rises back."""

from __future__ import annotations

import grpc
import pytest

from gateway.limits import (
    GradientLimit,
    LimitSettings,
    QualityFactor,
    QualitySettings,
    QueueSettings,
    QueueShedder,
)


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_window(limiter: GradientLimit, clock: FakeClock, rtt_s: float, calls: int = 10) -> None:
    """One window (0.1 s and a bit) with the limit fully used: `calls` at once, each rtt_s."""
    admitted = sum(limiter.try_acquire() for _ in range(calls))
    clock.now += 0.11
    for _ in range(admitted):
        limiter.release(rtt_s)


def test_limit_grows_while_latency_stays_at_its_long_term_level():
    clock = FakeClock()
    limiter = GradientLimit(LimitSettings(initial_limit=4, max_limit=50), clock)
    for _ in range(20):
        run_window(limiter, clock, 0.010, calls=int(limiter.limit))
    # Each window adds smoothing * sqrt(limit): from 4 to more than double in 20 windows.
    assert limiter.limit > 8
    assert limiter.long_rtt == pytest.approx(0.010)


def test_limit_shrinks_when_latency_rises_past_the_tolerance_and_stops_at_the_minimum():
    clock = FakeClock()
    limiter = GradientLimit(LimitSettings(initial_limit=20, min_limit=6, max_limit=50), clock)
    for _ in range(30):
        run_window(limiter, clock, 0.010, calls=int(limiter.limit))
    grown = limiter.limit
    for _ in range(2):  # queueing: 5x the latency
        run_window(limiter, clock, 0.050, calls=int(limiter.limit))
    assert limiter.limit < grown * 0.95
    for _ in range(100):
        run_window(limiter, clock, 0.100, calls=int(limiter.limit))
    assert limiter.limit == pytest.approx(6)


def test_an_app_limited_window_does_not_grow_the_limit():
    clock = FakeClock()
    limiter = GradientLimit(LimitSettings(initial_limit=20, max_limit=50), clock)
    for _ in range(10):
        run_window(limiter, clock, 0.010, calls=5)  # 5 of 20 slots used
    assert limiter.limit == 20


def test_acquire_refuses_over_the_limit_and_a_drop_backs_off_by_the_factor():
    clock = FakeClock()
    limiter = GradientLimit(LimitSettings(initial_limit=3, min_limit=1, max_limit=10), clock)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    limiter.release(None, dropped=True)
    assert limiter.limit == pytest.approx(2.7) and limiter.in_flight == 2
    assert not limiter.try_acquire()  # int(2.7) = 2 slots, both taken


def test_codel_sheds_long_waits_only_once_a_whole_interval_stayed_over_target():
    clock = FakeClock()
    settings = QueueSettings(target_s=0.005, interval_s=0.1, max_wait_s=0.01, min_samples=1)
    shedder = QueueShedder(settings, clock)
    assert not shedder.shed(0.050)  # a burst: not yet overloaded
    clock.now += 0.05
    assert not shedder.shed(0.020)
    clock.now += 0.06  # the interval ends; its least wait (20 ms) is over target
    assert shedder.shed(0.030)
    assert not shedder.shed(0.008)  # under max_wait: served even while overloaded
    clock.now += 0.1  # the next interval saw an 8 ms least wait... still over 5 ms target
    assert shedder.shed(0.012)
    clock.now += 0.1  # 12 ms least
    shedder.shed(0.001)
    clock.now += 0.1  # least wait 1 ms: the standing queue is gone
    assert not shedder.shed(0.5)


def test_codel_ignores_an_interval_with_too_few_calls():
    clock = FakeClock()
    shedder = QueueShedder(QueueSettings(min_samples=5), clock)
    shedder.shed(0.050)  # one slow wake-up on a quiet server
    clock.now += 0.11
    assert not shedder.shed(0.050) and not shedder.overloaded
    for _ in range(5):
        shedder.shed(0.050)
    clock.now += 0.11
    assert shedder.shed(0.050)  # five calls, all waiting: a standing queue


def test_quality_factor_falls_under_pressure_rises_without_it_and_stays_in_bounds():
    clock = FakeClock()
    settings = QualitySettings(q_min=0.1, window_s=0.5, min_samples=10, pressed_share=0.1)
    quality = QualityFactor(settings, clock)
    assert not quality.pressed(5, 8.0) and quality.pressed(6, 8.0)  # high water: 0.75 x limit

    def window(pressed: int) -> None:  # 20 arrivals, `pressed` of them met queueing
        for i in range(19):
            quality.observe(i < pressed)
        clock.now += 0.5
        quality.observe(False)

    window(pressed=2)  # 2 of 20: not over the share
    assert quality.q == 1.0
    window(pressed=3)
    assert quality.q == pytest.approx(0.8)
    for _ in range(30):
        window(pressed=20)
    assert quality.q == pytest.approx(0.1)
    window(pressed=0)
    assert quality.q == pytest.approx(0.15)
    assert quality.for_call(1.0) == (pytest.approx(0.15), "LOAD")
    for _ in range(30):
        window(pressed=0)
    assert quality.q == 1.0 and quality.for_call(1.0) == (1.0, "")
    assert quality.for_call(0.025) == (pytest.approx(0.5), "TIME_LEFT")


def test_pushback_hint_is_the_recent_latency_or_no_retry_when_most_calls_were_refused():
    from cascade.telemetry import new_registry
    from gateway.admission import Admission, AdmissionSettings

    clock = FakeClock()
    settings = AdmissionSettings(limit=LimitSettings(initial_limit=1, min_limit=1, max_limit=1))
    admission = Admission(settings, new_registry(process_metrics=False), clock)
    try:
        for _ in range(3):  # admitted calls of 15 ms teach the limiter the latency
            admission._count(clock(), True)
            admission.limiter.try_acquire()
            admission.limiter.release(0.015)
        assert admission.pushback_ms() == 30  # twice the recent latency
        for _ in range(4):
            admission._count(clock(), False)
        assert admission.pushback_ms() == -1  # 4 of 7 refused: over half
        clock.now += 2.0  # two seconds on, the refusals are forgotten
        admission._count(clock(), True)
        assert admission.pushback_ms() == 30
    finally:
        admission.close()


class FakeCall:
    """What Admission reads of a call: no deadline, no metadata."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple:
        return ()


def _admission(clock: FakeClock):
    from cascade.telemetry import new_registry
    from gateway.admission import RECOMMEND, Admission, AdmissionSettings

    admission = Admission(AdmissionSettings(), new_registry(process_metrics=False), clock)
    details = type("Details", (), {"method": RECOMMEND})
    return admission, details


def _call(admission, details, clock: FakeClock, latency_s: float, inside=None) -> bool:
    """One Recommend through the interceptor taking `latency_s` of fake time; `inside` runs while
    it is in flight (another call overlapping it)."""

    def behavior(_request, _context):
        clock.now += latency_s
        if inside is not None:
            inside()
        return "answer"

    handler = grpc.unary_unary_rpc_method_handler(behavior)
    wrapped = admission.intercept_service(lambda _details: handler, details)
    if wrapped.unary_unary is None:  # refused (its handler answers without reading)
        return False
    wrapped.unary_unary(object(), FakeCall())
    return True


def test_slow_calls_alone_never_shrink_the_funnel():
    """A CPU-bound neighbour: every call 200 ms (4x the old p95 target), and a second client's
    call overlapping each one, far below the concurrency limit: nothing waits at the gateway."""
    clock = FakeClock()
    admission, details = _admission(clock)
    for _ in range(200):
        _call(admission, details, clock, 0.2, inside=lambda: _call(admission, details, clock, 0.2))
    assert admission.quality.q == 1.0
    assert admission.quality.for_call(1.0) == (1.0, "")


def test_calls_filling_the_concurrency_limit_shrink_the_funnel_before_any_is_refused():
    clock = FakeClock()
    admission, details = _admission(clock)
    outcomes: list[bool] = []

    def nested(depth: int):  # `depth` calls in flight at once, each 5 ms: fast, but piled up
        inner = nested(depth - 1) if depth > 1 else None
        return lambda: outcomes.append(_call(admission, details, clock, 0.005, inner))

    for _ in range(200):  # about 10 s of fake time: 20 windows
        nested(int(admission.limiter.limit))()  # the limit full, not exceeded
    assert all(outcomes)  # nothing refused
    assert admission.quality.q == pytest.approx(admission.settings.quality.q_min)
    assert admission.quality.for_call(1.0)[1] == "LOAD"
    for _ in range(2000):  # then 10 s of one call at a time: q climbs back to 1
        _call(admission, details, clock, 0.005)
    assert admission.quality.q == 1.0
