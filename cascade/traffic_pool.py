"""The traffic pool for new uploads: which young uploads get a page slot on one request.

Each upload is promised `target` impressions (K) in its first `window_s`. Its boost is feedback
control on what was delivered: the schedule rises from `lead` x K at upload to K at `deliver_by`
of the window, and boost = gain x (1 - delivered / schedule), so an upload behind its schedule is
offered more often and to weaker matches, one ahead of it not at all. Explore, then exploit: once
an upload has had `judge_share` x K impressions, a Beta posterior on its play rate (prior centred
on the pool's pooled rate, `prior_strength` impressions strong) ends the boost when the rate is
below `poor_ratio` x that baseline with probability `confidence`, and raises its target to
`extend` x K when above `good_ratio` x baseline with that probability. On one request the slot
goes to followers of the creator first (at once, while the upload is in the pool), then to
others by the boost and the caller's taste match in [0, 1].

Pure functions over arrays: the gateway (gateway/pool.py) and the simulator's ease+pool arm
(research/simulate.py) call the same code with their own counters and taste signals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAST_SLOTS = -1  # position default: the page's last `slots` slots
# An upload's state in the pool (the gateway's metrics count them).
OUTSIDE, BOOSTING, EXTENDED, STOPPED, DONE = 0, 1, 2, 3, 4
STATES = {BOOSTING: "boosting", EXTENDED: "extended", STOPPED: "stopped_early", DONE: "done"}
_GRID = (np.arange(400) + 0.5) / 400  # midpoints of [0, 1]: the posterior's quadrature


@dataclass(frozen=True)
class PoolSettings:
    # Page slots the pool may fill per request; 0 turns the pool off.
    slots: int = 1
    # K: impressions promised to each upload in its first window. Platforms promise new posts on
    # the order of 100 in their first 24 h; the simulator scales it to its audience
    # (cascade.data.synthetic.exposure_target).
    target: int = 100
    window_s: int = 86_400  # the upload's first day: after it the pool lets it go
    position: int = LAST_SLOTS  # the first slot the pool fills (0-based); -1: the page's last
    deliver_by: float = 0.75  # share of the window by which the schedule reaches the target
    lead: float = 0.1  # the schedule at upload, as a share of the target (a new upload starts)
    gain: float = 2.0  # boost per unit of schedule shortfall; > 1 widens a late upload's audience
    judge_share: float = 0.3  # impressions (share of K) before the posterior may stop or extend
    prior_play_rate: float = 0.1  # the baseline's prior: play rate per impression of uploads
    prior_strength: float = 10.0  # pseudo-impressions of the prior
    poor_ratio: float = 0.5  # stop when the play rate is below this x the baseline ...
    good_ratio: float = 1.5  # ... extend when above this x the baseline ...
    confidence: float = 0.8  # ... with this posterior probability
    extend: float = 3.0  # an extended upload's target, x K (platforms go up to 5x for the best)

    def __post_init__(self) -> None:
        _at_least(self, "slots", 0, integer=True)
        _at_least(self, "target", 1, integer=True)
        _at_least(self, "window_s", 1, integer=True)
        if not isinstance(self.position, int) or self.position < LAST_SLOTS:
            raise ValueError(f"pool.position must be an integer >= -1, got {self.position!r}")
        for name in ("deliver_by", "judge_share", "prior_play_rate", "confidence"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value <= 1 or (name == "confidence" and value < 0.5):
                bound = "[0.5, 1]" if name == "confidence" else "(0, 1]"
                raise ValueError(f"pool.{name} must be a number in {bound}, got {value!r}")
        if not _number(self.lead) or not 0 <= self.lead <= 1:
            raise ValueError(f"pool.lead must be a number in [0, 1], got {self.lead!r}")
        for name in ("gain", "prior_strength"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"pool.{name} must be a number > 0, got {getattr(self, name)!r}")
        if not _number(self.poor_ratio) or not 0 <= self.poor_ratio < 1:
            raise ValueError(f"pool.poor_ratio must be a number in [0, 1), got {self.poor_ratio!r}")
        if not _number(self.good_ratio) or self.good_ratio <= 1:
            raise ValueError(f"pool.good_ratio must be a number > 1, got {self.good_ratio!r}")
        if not _number(self.extend) or self.extend < 1:
            raise ValueError(f"pool.extend must be a number >= 1, got {self.extend!r}")

    @property
    def on(self) -> bool:
        return self.slots > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(settings: PoolSettings, name: str, least: int, integer: bool) -> None:
    value = getattr(settings, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"pool.{name} must be an integer >= {least}, got {value!r}")


def baseline(settings: PoolSettings, delivered: np.ndarray, plays: np.ndarray) -> float:
    """The pooled play rate per impression of the uploads in the pool, shrunk to the prior: what
    "engaging poorly" and "well" are measured against."""
    strength = settings.prior_strength
    return float(
        (np.sum(plays) + settings.prior_play_rate * strength) / (np.sum(delivered) + strength)
    )


def below(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(rate < x) under Beta(alpha, beta), per row (quadrature on a fixed grid: no special
    functions needed, accurate to about 1e-3, ample for a stopping rule)."""
    alpha, beta = np.asarray(alpha, np.float64)[:, None], np.asarray(beta, np.float64)[:, None]
    log_density = (alpha - 1) * np.log(_GRID) + (beta - 1) * np.log1p(-_GRID)
    density = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    inside = _GRID[None, :] < np.asarray(x, np.float64).reshape(-1, 1)
    return (density * inside).sum(axis=1) / density.sum(axis=1)


def status(
    settings: PoolSettings,
    age_s: np.ndarray,
    delivered: np.ndarray,
    plays: np.ndarray,
    rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per upload: its state (BOOSTING, EXTENDED, STOPPED, DONE, OUTSIDE the window), its target
    and its boost (0 unless boosting or extended), from its age, the impressions and plays it got
    so far (organic ones too: the promise is impressions, whatever filled them) and the baseline
    play `rate` (`baseline`)."""
    age = np.asarray(age_s, np.float64)
    delivered = np.asarray(delivered, np.float64)
    plays = np.minimum(np.asarray(plays, np.float64), delivered)
    k = float(settings.target)
    judged = delivered >= max(1.0, np.ceil(settings.judge_share * k))
    prior = settings.prior_strength
    alpha, beta = rate * prior + plays, (1 - rate) * prior + delivered - plays
    stopped = np.zeros(len(age), bool)
    extended = np.zeros(len(age), bool)
    if judged.any():
        p_poor = below(np.full(len(age), settings.poor_ratio * rate), alpha, beta)
        p_good = 1 - below(np.full(len(age), min(settings.good_ratio * rate, 1.0)), alpha, beta)
        stopped = judged & (p_poor >= settings.confidence)
        extended = judged & ~stopped & (p_good >= settings.confidence)
    target = np.where(extended, settings.extend * k, k)
    elapsed = age / (settings.deliver_by * settings.window_s)
    schedule = target * np.minimum(1.0, settings.lead + elapsed)
    shortfall = 1 - delivered / np.maximum(schedule, 1e-9)
    boost = np.maximum(settings.gain * shortfall, 0.0)
    inside = (age >= 0) & (age < settings.window_s)
    state = np.where(extended, EXTENDED, BOOSTING)
    state = np.where(delivered >= target, DONE, state)
    state = np.where(stopped, STOPPED, state)
    state = np.where(inside, state, OUTSIDE)
    boost = np.where((state == BOOSTING) | (state == EXTENDED), boost, 0.0)
    return state, target, boost


def choose(
    state: np.ndarray,
    boost: np.ndarray,
    follower: np.ndarray,
    match: np.ndarray,
    draws: np.ndarray,
    slots: int,
) -> np.ndarray:
    """Indices of the uploads that get this request's slots, best first (`state`, `boost`: from
    `status`). A follower of the creator is offered every upload still in the pool (boosting or
    extended) at once, whatever its schedule: a follower is the likeliest to engage, and waiting
    for the schedule would show the upload to followers hours late. Anyone else is offered it
    with probability min(1, boost x match), match the caller's taste match in [0, 1] (`draws`:
    uniform [0, 1) per upload, seeded by the caller). Followers first, then the higher offer."""
    follower = np.asarray(follower, bool)
    open_ = (np.asarray(state) == BOOSTING) | (np.asarray(state) == EXTENDED)
    offer = np.minimum(np.asarray(boost, np.float64) * np.clip(match, 0.0, 1.0), 1.0)
    offer = np.where(follower, open_.astype(np.float64), offer)
    taken = np.flatnonzero(np.asarray(draws) < offer)
    order = np.lexsort((-offer[taken], ~follower[taken]))
    return taken[order][: max(slots, 0)]


def place_slots(n_page: int, n_picks: int, position: int, count: int) -> tuple[int, int]:
    """(first slot, slots) for `n_picks` pool items on a page of `n_page` organic items cut to
    `count`: from `position` (LAST_SLOTS: the last ones), never past the organic items' end."""
    n = min(n_picks, count)
    start = count - n if position == LAST_SLOTS else min(position, count - n)
    return min(start, max(min(n_page, count - n), 0)), n
