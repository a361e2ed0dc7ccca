"""The traffic pool's controller on its own: a tiny simulated day drives delivered impressions to
the target, stops boosting an upload whose first impressions engage poorly and extends one that
engages well; offers go to followers first; a bad setting is refused naming its key."""

from __future__ import annotations

import numpy as np
import pytest

from cascade import traffic_pool
from cascade.traffic_pool import (
    BOOSTING,
    DONE,
    EXTENDED,
    LAST_SLOTS,
    OUTSIDE,
    STOPPED,
    PoolSettings,
    choose,
    status,
)

DAY = 86_400


def simulated_day(settings: PoolSettings, play_rate: np.ndarray, requests: int, seed: int = 0):
    """One day of requests spread evenly over 24 h for uploads made at t = 0. On each request a
    random third of the uploads is among the user's candidates, with a random taste match and a
    1-in-10 chance the user follows the creator; the pool fills one slot; a shown upload is
    played with its own probability. Returns (delivered, plays, state at the day's end)."""
    rng = np.random.default_rng(seed)
    n = len(play_rate)
    delivered, plays = np.zeros(n), np.zeros(n)
    for t in np.linspace(0, DAY - 1, requests):
        eligible = np.flatnonzero(rng.random(n) < 1 / 3)
        if not len(eligible):
            continue
        rate = traffic_pool.baseline(settings, delivered, plays)
        state, _, boost = status(
            settings, np.full(len(eligible), t), delivered[eligible], plays[eligible], rate
        )
        follower = rng.random(len(eligible)) < 0.1
        match = rng.random(len(eligible))
        picked = eligible[choose(state, boost, follower, match, rng.random(len(eligible)), 1)]
        delivered[picked] += 1
        plays[picked] += rng.random(len(picked)) < play_rate[picked]
    rate = traffic_pool.baseline(settings, delivered, plays)
    state, _, _ = status(settings, np.full(n, DAY - 1), delivered, plays, rate)
    return delivered, plays, state


def test_the_controller_delivers_the_target_and_not_much_more():
    settings = PoolSettings(target=20, poor_ratio=0.0, good_ratio=100.0)  # no early decisions
    rates = np.full(30, 0.2)
    delivered, _, state = simulated_day(settings, rates, requests=3000)
    assert np.mean(delivered >= 20) >= 0.9  # the promise kept for almost every upload
    assert delivered.max() <= 24  # no upload boosted far past its target
    assert (state == DONE).mean() >= 0.9
    # With twice the requests the controller holds back: the same deliveries, not twice as many.
    more, _, _ = simulated_day(settings, rates, requests=6000, seed=1)
    assert np.mean(more >= 20) >= 0.9 and more.max() <= 24


def test_a_poorly_engaging_upload_stops_early_and_a_good_one_is_extended():
    settings = PoolSettings(target=20, judge_share=0.3, extend=3.0, confidence=0.8)
    rates = np.r_[np.full(20, 0.2), 0.0, 0.0, 0.9, 0.9]  # two never played, two loved
    delivered, plays, state = simulated_day(settings, rates, requests=4000)
    assert list(state[20:22]) == [STOPPED, STOPPED]
    assert delivered[20:22].max() < 20  # the boost ended before the target
    assert set(state[22:].tolist()) <= {EXTENDED, DONE}
    assert delivered[22:].min() > 20  # beyond K: the extended target
    assert np.mean(delivered[:20] >= 20) >= 0.9  # the ordinary ones still get K


def test_the_schedule_paces_and_the_window_ends_the_boost():
    settings = PoolSettings(target=100, deliver_by=0.5, lead=0.0, gain=1.0)
    ages = np.array([DAY / 4, DAY / 4, DAY / 4, DAY, -5])
    delivered = np.array([0, 50, 60, 0, 0])
    state, target, boost = status(settings, ages, delivered, delivered * 0.1, 0.1)  # average
    # A quarter day in, the schedule stands at 50: behind -> 1, on it -> 0, ahead -> 0.
    assert boost.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0])
    assert state.tolist() == [BOOSTING, BOOSTING, BOOSTING, OUTSIDE, OUTSIDE]
    assert target.tolist() == [100] * 5


def test_followers_come_first_at_once_then_the_higher_offer():
    state = np.array([BOOSTING, BOOSTING, BOOSTING, BOOSTING, DONE, STOPPED])
    boost = np.array([0.0, 2.0, 2.0, 0.0, 0.0, 0.0])  # 0: 3 ahead of schedule, 4 and 5 out
    follower = np.array([True, False, False, False, True, True])
    match = np.array([0.0, 0.9, 0.4, 1.0, 1.0, 1.0])  # offers: -, 1, 0.8, 0, -, -
    always = np.zeros(6)  # every draw below any positive offer
    # The follower's upload at once though ahead of schedule; never a done or stopped one.
    assert choose(state, boost, follower, match, always, 4).tolist() == [0, 1, 2]
    assert choose(state, boost, follower, match, always, 1).tolist() == [0]
    assert choose(state, boost, follower, match, np.full(6, 0.99), 3).tolist() == [0, 1]
    assert choose(state, boost, follower, match, always, 0).tolist() == []


def test_slot_placement():
    assert traffic_pool.place_slots(10, 1, LAST_SLOTS, 10) == (9, 1)
    assert traffic_pool.place_slots(10, 2, 3, 10) == (3, 2)
    assert traffic_pool.place_slots(3, 2, LAST_SLOTS, 10) == (3, 2)  # a short page: after it
    assert traffic_pool.place_slots(10, 5, 0, 3) == (0, 3)


def test_the_posterior_probability_matches_a_known_beta():
    # Beta(1, 1) is uniform: P(rate < x) = x; Beta(2, 1): x^2.
    assert traffic_pool.below(np.array([0.3]), np.array([1.0]), np.array([1.0]))[0] == (
        pytest.approx(0.3, abs=2e-3)
    )
    assert traffic_pool.below(np.array([0.5]), np.array([2.0]), np.array([1.0]))[0] == (
        pytest.approx(0.25, abs=2e-3)
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"slots": -1}, "pool.slots must be an integer >= 0"),
        ({"target": 0}, "pool.target must be an integer >= 1"),
        ({"target": 2.5}, "pool.target must be an integer >= 1"),
        ({"window_s": 0}, "pool.window_s must be an integer >= 1"),
        ({"position": -2}, "pool.position must be an integer >= -1"),
        ({"deliver_by": 0}, "pool.deliver_by must be a number in"),
        ({"confidence": 0.3}, "pool.confidence must be a number in \\[0.5, 1\\]"),
        ({"gain": 0}, "pool.gain must be a number > 0"),
        ({"poor_ratio": 1.0}, "pool.poor_ratio must be a number in \\[0, 1\\)"),
        ({"good_ratio": 1.0}, "pool.good_ratio must be a number > 1"),
        ({"extend": 0.5}, "pool.extend must be a number >= 1"),
        ({"lead": True}, "pool.lead must be a number in \\[0, 1\\]"),
    ],
)
def test_a_bad_pool_setting_is_refused_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        PoolSettings(**values)
