"""The simulator: its users answer from the world's truth, its arms are judged on that truth, and
it drives a real stack (gateway and stage servers on loopback) through Recommend and Feedback."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.compute as pc
import pytest

from cascade.data.synthetic import DAY, SyntheticConfig, generate, respond
from gateway.arms import Arm
from gateway.client import CascadeClient
from research.simulate import (
    ENGAGEMENT,
    GatewayPolicy,
    SimulationConfig,
    World,
    reference_policy,
    simulate,
    summarise,
)
from tests.gateway.conftest import VERSION, build_bundle, gateway_settings, start_stages
from training.retrain import Base, RetrainConfig, read_log, retrain

WORLD = SyntheticConfig(n_users=120, n_items=150, days=6, impressions_per_user=40, seed=4)


@pytest.fixture(scope="module")
def world():
    return generate(WORLD, progress=False)


def test_responses_follow_the_truth_on_fixed_inputs():
    # Independent reference: P(click at position k) = (1 + k) ** -decay * sigmoid(-3 + 2 u), and
    # each later event given the one before from its own logistic, written out by hand.
    config = SyntheticConfig(page_size=3, position_decay=0.8)
    n = 200_000
    utility = np.full(n, 1.0, dtype=np.float32)
    position = np.tile(np.arange(3), n // 3 + 1)[:n]
    out = respond(config, utility, position, np.random.default_rng(0))

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    for k in range(3):
        at = position == k
        assert out["click"][at].mean() == pytest.approx((1 + k) ** -0.8 * sigmoid(-1.0), abs=0.006)
    assert out["play"][out["click"]].mean() == pytest.approx(sigmoid(2.5), abs=0.01)
    assert out["complete"][out["play"]].mean() == pytest.approx(sigmoid(0.5), abs=0.01)
    assert out["like"][out["complete"]].mean() == pytest.approx(sigmoid(-2.0), abs=0.01)
    assert not (out["like"] & ~out["complete"]).any()


def test_expected_engagement_is_the_truths_probabilities_weighted(world):
    truth = World(world)
    utility, position = np.array([0.0, 2.0], dtype=np.float32), np.array([0, 4])
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    got = truth.expected_engagement(utility, position)
    for u, k, value in zip(utility, position, got, strict=True):
        play = (1 + k) ** -WORLD.position_decay * sig(-3 + 2 * u) * sig(1.5 + u)
        complete = play * sig(-1 + 1.5 * u)
        like, share = complete * sig(-3.5 + 1.5 * u), complete * sig(-5.5 + 1.5 * u)
        assert value == pytest.approx(play + complete + 2 * like + 3 * share, rel=1e-5)
    assert ENGAGEMENT == {"play": 1.0, "complete": 1.0, "like": 2.0, "share": 3.0}


def test_reference_arms_rank_oracle_above_ease_and_popular_above_random(world):
    arms = tuple(Arm(name) for name in ("random", "oracle", "popular", "ease"))
    config = SimulationConfig(days=2, users=120, sessions_per_day=2.0, arms=arms, seed=1)
    truth = World(world)
    policies = {a.name: reference_policy(a.name, world, truth, seed=1) for a in arms}
    rows = simulate(world, policies, config, world=truth)
    report = summarise(rows, world.n_items - 1)
    total = {
        arm.name: rows["expected"][rows["arm"] == arm.name].mean() for arm in arms
    }  # over both days
    assert total["oracle"] > max(total["ease"], total["popular"]) > total["random"]
    for entry in report:
        if entry["arm"] in ("random", "oracle"):
            assert entry["oracle_gap_closed"] == pytest.approx(float(entry["arm"] == "oracle"))
    # No arm shows an item twice on a page, and no reference arm repeats a consumed item.
    for session in np.unique(rows["session"]):
        items = rows["item"][rows["session"] == session]
        assert len(set(items.tolist())) == len(items)


def test_the_same_seed_gives_the_same_simulation(world):
    arms = (Arm("random"), Arm("popular"))
    config = SimulationConfig(days=1, users=40, arms=arms, seed=7)

    def run():
        truth = World(world)
        policies = {a.name: reference_policy(a.name, world, truth, seed=7) for a in arms}
        return simulate(world, policies, config, world=truth)

    first, second = run(), run()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_a_two_day_simulation_against_the_real_stack_retrains_it_overnight(world, tmp_path):
    """Day 1 is served by the starting bundle; after it a job folds the gateway's event log into
    a new bundle that the running stages hot-reload, so day 2 is served by the retrained one. The
    gateway runs on the simulated clock (clock "caller"), so the log is in simulated time."""
    built = build_bundle(tmp_path, generate(WORLD, progress=False))
    stages, recall_service = start_stages(built)
    from gateway.server import start

    settings = gateway_settings(built, stages, clock="caller")
    gateway = start(settings)
    retrained = []
    try:
        with CascadeClient(gateway.address, timeout_s=10.0) as client:
            cascade = GatewayPolicy(client)

            def overnight(day: int) -> None:
                if day == 0:
                    assert gateway.service.impressions.flush()  # day 1's answers are in the log
                    events, impressions = read_log(settings.event_log)
                    retrained.append(
                        retrain(
                            built.artifacts,
                            Base.of(built.dataset),
                            events,
                            impressions,
                            "day2",
                            RetrainConfig(prerank_users=10, prerank_epochs=1),
                            built.data_dir,
                        )
                    )
                    wait_until_served(client, "day2")

            arms = (Arm("cascade"), Arm("random"))
            # A fixed catalogue (no uploads): this is about the overnight retrain alone.
            config = SimulationConfig(days=2, users=40, arms=arms, seed=2, uploads_per_day=0)
            policies = {
                "cascade": cascade,
                "random": reference_policy("random", world, World(world), 2),
            }
            rows = simulate(world, policies, config, on_day_end=overnight)
        served = rows["arm"] == "cascade"
        assert served.sum() >= 20 and (rows["arm"] == "random").sum() >= 20
        assert cascade.rejected == 0  # every event the simulator sent was accepted
        # Each answer was a page of distinct catalog items, and the played items reached recall.
        assert rows["item"][served].min() >= 1 and rows["item"][served].max() < world.n_items
        report = summarise(rows, world.n_items - 1)
        assert {e["day"] for e in report} == {0, 1}
        assert all(e["expected_engagement"] > 0 for e in report)
        assert retrained[0]["served_impressions"] == (served & (rows["day"] == 0)).sum()
        # The log is in simulated time, and each day was served by that day's bundle.
        assert gateway.service.impressions.flush()
        _, impressions = read_log(settings.event_log)
        impressions = impressions.filter(pc.greater(impressions["user_id"], 0))  # not the polls
        start_s = (World(world).end_ts // DAY + 1) * DAY
        day = (impressions["request_time_ms"].to_numpy() // 1000 - start_s) // DAY
        ranked_by = [json.loads(v).get("rank") for v in impressions["model_versions"].to_pylist()]
        assert set(day.tolist()) == {0, 1}
        assert {v for v, d in zip(ranked_by, day, strict=True) if d == 0} == {VERSION}
        assert {v for v, d in zip(ranked_by, day, strict=True) if d == 1} == {"day2"}
    finally:
        gateway.stop(0)
        gateway.service.close()
        for server in stages.values():
            server.stop(0)


def wait_until_served(client: CascadeClient, version: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trace = client.recommend(0, debug=True).trace  # anonymous: no user learns from it
        served = {t.stage: t.model_version for t in trace}
        if served.get("recall") == served.get("rank") == version:  # each stage reloads alone
            return
        time.sleep(0.2)
    raise AssertionError(f"the stack did not serve {version} within {timeout_s} s")


def test_explored_and_organic_shares_per_arm_and_day():
    rows = {
        "arm": np.array(["pooled"] * 4 + ["cascade"] * 2),
        "day": np.zeros(6, dtype=np.int64),
        "session": np.array([0, 0, 1, 1, 2, 2]),
        "user": np.array([1, 1, 2, 2, 3, 3]),
        "item": np.array([3, 105, 4, 101, 5, 102]),
        "position": np.array([0, 1, 0, 1, 0, 1]),
        "expected": np.array([0.5, 0.1, 0.5, 0.3, 0.4, 0.2]),
        "realised": np.zeros(6),
        "creator": np.ones(6, dtype=np.int64),
        "age_s": np.array([9e6, 100, 9e6, 3 * 86_400, 9e6, 9e6]),
        "explored": np.array([False, True, False, False, False, False]),
    }
    by = {r["arm"]: r for r in summarise(rows, 200, first_upload=100)}
    assert by["pooled"]["explored_share"] == 0.25
    assert by["pooled"]["explored_expected"] == pytest.approx(0.1)
    assert by["pooled"]["fresh_share"] == 0.25  # the explored upload is under a day old
    assert by["pooled"]["organic_fresh_share"] == 0.0
    assert by["pooled"]["organic_upload_share"] == pytest.approx(1 / 3)  # 101, three days old
    assert "explored_share" not in by["cascade"]
    assert by["cascade"]["organic_upload_share"] == 0.5
