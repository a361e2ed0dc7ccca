"""The creators' side of the world: upload rates and stops follow the documented response curve
in the two-sided world, and do not react at all in the neutral one; the world hash moves with any
parameter."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.data.synthetic import DAY, SyntheticConfig, exposure_target, generate
from cascade.data.two_sided import Supply, stop_probability, upload_multiplier

WORLD = SyntheticConfig(n_users=80, n_items=100, n_creators=6, days=4, seed=5)
NOW = WORLD.start_ts + 10 * DAY


@pytest.fixture(scope="module")
def truth():
    return generate(WORLD, progress=False).truth


def _supply(config: SyntheticConfig, truth: dict) -> Supply:
    """Creator 1's two uploads of yesterday-but-one were played 4 times each in their first
    24 h, creator 2's two not at all (a log's upload got 2 plays: x = 2 and x = 0)."""
    supply = Supply(config, dict(truth), reference=2.0, audience_share=1.0)
    uploaded = NOW - 2 * DAY
    supply.uploaded(np.array([500, 501, 502, 503]), np.array([1, 1, 2, 2]), np.full(4, uploaded))
    for _ in range(4):
        supply.played(np.array([500, 501]), uploaded + 3600)
    supply.played(np.array([500]), uploaded + 2 * DAY)  # after its first 24 h: not counted
    return supply


def test_played_creators_upload_more_and_starved_ones_less_as_the_curve_says(truth):
    supply = _supply(WORLD, truth)
    base = supply.base_rate.copy()
    supply.start_day(dict(truth), NOW, np.random.default_rng(0))
    np.testing.assert_allclose(supply.exposure[[1, 2, 3]], [2.0, 0.0, 1.0])
    rate = supply.base_rate[:4] * upload_multiplier(WORLD, supply.exposure[:4])
    # m(x) = floor + (1 - floor)(1 + h) x / (h + x) with floor 0.2, h 1: m(2) = 1.267, m(0) = 0.2
    np.testing.assert_allclose(rate[1:] / base[1:4], [0.2 + 0.8 * 2 * 2 / 3, 0.2, 1.0])
    # q(x) = 0.05 / (1 + x / 0.25): 0.0056 for the played creator, 0.05 for the starved one.
    np.testing.assert_allclose(stop_probability(WORLD, np.array([2.0, 0.0])), [0.05 / 9, 0.05])
    # Drawn over many days, the played creator uploads more than the starved one, as expected.
    counts = np.random.default_rng(1).poisson(np.outer(np.ones(2000), rate[1:3])).mean(axis=0)
    assert counts[0] > base[1] > 0 and counts[1] < base[2]
    np.testing.assert_allclose(counts, rate[1:3], rtol=0.1)


def test_the_neutral_world_does_not_react_to_plays(truth):
    neutral = WORLD.neutral()
    supply = _supply(neutral, truth)
    supply.start_day(dict(truth), NOW, np.random.default_rng(0))
    np.testing.assert_allclose(upload_multiplier(neutral, supply.exposure[1:3]), [1.0, 1.0])
    q = stop_probability(neutral, supply.exposure[1:3])
    assert q[0] == q[1] == stop_probability(WORLD, np.ones(1))[0]
    assert neutral.novelty_bonus == 0


def test_stops_and_joins_change_the_active_creators(truth):
    config = SyntheticConfig(**{**WORLD.__dict__, "stop_starved": 1.0, "creator_join_rate": 1.0})
    state = dict(truth)
    supply = Supply(config, state, reference=1.0, audience_share=1.0)
    supply.uploaded(np.array([500]), np.array([1]), np.array([NOW - 2 * DAY]))
    day = supply.start_day(state, NOW, np.random.default_rng(3))
    assert day["stopped"] >= 1 and not supply.active[1]  # x = 0 with q(0) = 1
    assert day["joined"] > 0 and len(state["creator_style"]) == 7 + day["joined"]
    assert (day["creators"] > 0).all() and supply.active[day["creators"]].all()


def test_world_hash_changes_with_any_parameter():
    assert WORLD.world_hash() == SyntheticConfig(**WORLD.__dict__).world_hash()
    for change in ({"content_noise": 1.1}, {"stop_half": 0.3}, {"seed": 6}):
        assert SyntheticConfig(**{**WORLD.__dict__, **change}).world_hash() != WORLD.world_hash()
    assert WORLD.neutral().world_hash() != WORLD.world_hash()


def test_exposure_target_scales_the_platform_promise_to_the_simulated_audience():
    config = SyntheticConfig()
    assert exposure_target(config, 2_000) == 10  # 100 * 2,000 / 20,000
    assert exposure_target(config, 50) == 1  # never below one impression


def test_the_default_world_uploads_several_percent_of_its_catalogue_a_day():
    config = SyntheticConfig()
    assert 0.02 <= config.uploads_per_day / config.n_items <= 0.1


def test_content_vectors_are_a_noisy_view_of_the_latent(truth):
    latent, content = truth["item_latent"][1:], truth["item_content"][1:]
    noise = np.std(content - latent) * WORLD.dim**0.5
    assert abs(noise - WORLD.content_noise) < 0.1
    assert np.corrcoef(latent.ravel(), content.ravel())[0, 1] > 0.5
