"""The overload controllers of the gateway, as plain objects on an injectable clock (unit-testable).

GradientLimit: an adaptive concurrency limit in the spirit of Netflix's Gradient2 (the limit follows
the ratio of long-term to short-term latency, backs off by 0.9 on a drop). QueueShedder: CoDel on
the time a call waited after admission. QualityFactor: the funnel's size factor q in [q_min, 1].
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]  # seconds, monotonic


@dataclass(frozen=True)
class LimitSettings:
    initial_limit: int = 8  # concurrent Recommend calls admitted at first
    min_limit: int = 2
    max_limit: int = 12  # below the gateway's worker threads: an admitted call never queues
    smoothing: float = 0.2  # share of each new estimate taken into the limit
    # Latency may reach this multiple of the no-queue latency before the limit shrinks: 2 keeps
    # admitted calls within 2x the latency of a lightly loaded stack.
    tolerance: float = 2.0
    drift: float = 0.0005  # per window, the no-queue estimate creeps toward the latency seen
    window_s: float = 0.1  # the short-term window; an update needs min_samples in it too
    min_samples: int = 5
    backoff: float = 0.9  # the limit's factor on a drop (a call that ran out of time)

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        if not 0 < self.smoothing <= 1 or not 0 < self.backoff < 1 or self.tolerance < 1:
            raise ValueError("need 0 < smoothing <= 1, 0 < backoff < 1 and tolerance >= 1")
        if not 0 <= self.drift < 1 or self.window_s <= 0 or self.min_samples < 1:
            raise ValueError("need 0 <= drift < 1, min_samples >= 1 and window_s > 0")


class GradientLimit:
    """How many calls may run at once. Each window: gradient = clamp(tolerance * long / short,
    0.5, 1); limit <- (1 - s) * limit + s * (limit * gradient + sqrt(limit)). Good latency
    (gradient 1) grows the limit by s * sqrt(limit); queueing (short >> long) shrinks it by up to
    half. A window where fewer than half the slots were used says nothing (app-limited).

    `long_rtt` estimates the latency without queueing: it follows a lower window mean at once
    (halfway) and a higher one only by `drift` per window, so a sustained overload cannot teach
    it that queueing is normal (Gradient2's long-term average learns the queue after a while)."""

    def __init__(self, settings: LimitSettings | None = None, clock: Clock = time.monotonic):
        self.settings = LimitSettings() if settings is None else settings
        self.clock = clock
        self.limit = float(self.settings.initial_limit)
        self.in_flight = 0
        self.long_rtt = 0.0  # the no-queue latency estimate, seconds (0 until a window ends)
        self._window_start = clock()
        self._window_sum = 0.0
        self._window_count = 0
        self._window_peak = 0  # most calls in flight during the window
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_flight >= int(self.limit):
                return False
            self.in_flight += 1
            self._window_peak = max(self._window_peak, self.in_flight)
            return True

    def release(self, rtt_s: float | None, dropped: bool = False) -> None:
        """A call ended after `rtt_s` (None: it did no work, no sample); `dropped`: it ran out
        of time, so the limit backs off at once."""
        with self._lock:
            self.in_flight -= 1
            if dropped:
                self.limit = max(self.settings.min_limit, self.limit * self.settings.backoff)
            elif rtt_s is not None:
                self._window_sum += rtt_s
                self._window_count += 1
            now = self.clock()
            if (
                now - self._window_start >= self.settings.window_s
                and self._window_count >= self.settings.min_samples
            ):
                self._update(self._window_sum / self._window_count)
                self._window_start, self._window_sum, self._window_count = now, 0.0, 0
                self._window_peak = self.in_flight

    @property
    def short_rtt(self) -> float:
        return self._window_sum / self._window_count if self._window_count else self.long_rtt

    def _update(self, short: float) -> None:
        s = self.settings
        if not self.long_rtt:
            self.long_rtt = short
        elif short < self.long_rtt:
            self.long_rtt = 0.5 * (self.long_rtt + short)
        else:
            self.long_rtt += (short - self.long_rtt) * s.drift
        if self._window_peak < self.limit / 2:
            return
        gradient = max(0.5, min(1.0, s.tolerance * self.long_rtt / max(short, 1e-9)))
        estimate = self.limit * gradient + math.sqrt(self.limit)
        self.limit = (1 - s.smoothing) * self.limit + s.smoothing * estimate
        self.limit = max(float(s.min_limit), min(float(s.max_limit), self.limit))


@dataclass(frozen=True)
class QueueSettings:
    target_s: float = 0.005  # CoDel's target: the least wait of an interval should stay under it
    interval_s: float = 0.1
    max_wait_s: float = 0.010  # when overloaded, calls that waited longer are refused
    # An interval with fewer calls says nothing: one slow thread wake-up on a quiet server is
    # not a standing queue.
    min_samples: int = 5


class QueueShedder:
    """CoDel on queue time: overloaded while a whole interval's least wait exceeds the target
    (a standing queue, not a burst); while overloaded, a call that waited > max_wait is shed."""

    def __init__(self, settings: QueueSettings | None = None, clock: Clock = time.monotonic):
        self.settings = QueueSettings() if settings is None else settings
        self.clock = clock
        self.overloaded = False
        self._interval_start = clock()
        self._least = math.inf
        self._count = 0
        self._lock = threading.Lock()

    def shed(self, waited_s: float) -> bool:
        """Records one call's wait; True when it should be refused rather than served."""
        with self._lock:
            now = self.clock()
            self._least = min(self._least, waited_s)
            self._count += 1
            if now - self._interval_start >= self.settings.interval_s:
                enough = self._count >= self.settings.min_samples
                self.overloaded = enough and self._least > self.settings.target_s
                self._interval_start, self._least, self._count = now, math.inf, 0
            return self.overloaded and waited_s > self.settings.max_wait_s


@dataclass(frozen=True)
class QualitySettings:
    q_min: float = 0.1
    step_up: float = 0.05  # additive rise per window without pressure
    step_down: float = 0.8  # multiplicative fall per window under pressure
    window_s: float = 0.5
    min_samples: int = 10  # arrivals a window needs before it moves q
    # An arrival is pressure when the calls already running fill this share of the concurrency
    # limit (or it is refused, or a standing queue holds): the gateway's own queueing, which
    # latency alone is not (a CPU-bound neighbour slows every call without any call waiting).
    high_water: float = 0.75
    pressed_share: float = 0.1  # q falls in a window where more of its arrivals were pressure
    full_funnel_s: float = 0.05  # a call with less time left than this gets a smaller funnel

    def __post_init__(self) -> None:
        if not 0 < self.q_min <= 1 or not 0 < self.step_down < 1 or self.step_up <= 0:
            raise ValueError("need 0 < q_min <= 1, 0 < step_down < 1 and step_up > 0")
        if not 0 < self.high_water <= 1 or not 0 <= self.pressed_share < 1:
            raise ValueError("need 0 < high_water <= 1 and 0 <= pressed_share < 1")
        if self.min_samples < 1 or self.full_funnel_s <= 0:
            raise ValueError("need min_samples >= 1 and full_funnel_s > 0")


class QualityFactor:
    """q in [q_min, 1], the share of the funnel a call gets: recall, pre-rank and rank cuts are
    scaled by q. Lighter calls come before refused calls: q falls once arrivals find the
    concurrency limit nearly full (high_water), before it is full and calls are refused."""

    def __init__(self, settings: QualitySettings | None = None, clock: Clock = time.monotonic):
        self.settings = QualitySettings() if settings is None else settings
        self.clock = clock
        self.q = 1.0
        self._window_start = clock()
        self._arrivals = 0
        self._pressed = 0
        self._lock = threading.Lock()

    def pressed(self, in_flight: int, limit: float) -> bool:
        """Whether an arrival finding `in_flight` calls running under `limit` is pressure."""
        return in_flight >= self.settings.high_water * limit

    def observe(self, pressed: bool) -> None:
        """One arrival at the gateway: whether it met queueing (see `pressed`)."""
        with self._lock:
            self._arrivals += 1
            self._pressed += pressed
            now = self.clock()
            s = self.settings
            if now - self._window_start < s.window_s or self._arrivals < s.min_samples:
                return
            if self._pressed > s.pressed_share * self._arrivals:
                self.q = max(s.q_min, self.q * s.step_down)
            else:
                self.q = min(1.0, self.q + s.step_up)
            self._window_start, self._arrivals, self._pressed = now, 0, 0

    def for_call(self, time_left_s: float) -> tuple[float, str]:
        """This call's q and why it is below 1 ("LOAD", "TIME_LEFT" or "" at full quality)."""
        s = self.settings
        by_time = max(s.q_min, min(1.0, time_left_s / s.full_funnel_s))
        q = self.q
        if by_time < q:
            return by_time, "TIME_LEFT"
        return q, "LOAD" if q < 1.0 else ""
