"""Cold start in the simulation: creators upload through each simulated day and users change
whom they follow; every arm sees the same catalogue at the same time (the running stack through
AddItems and ChangeFollows), so the share of impressions on tracks younger than a day measures
how each arm treats new items."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.artifacts import Bundle
from cascade.catalog_fold import load_bundle_uploads, read_uploads
from cascade.data.split import split_dataset
from cascade.data.synthetic import DAY, SyntheticConfig, generate
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from gateway.arms import Arm
from gateway.client import CascadeClient
from research.simulate import (
    GatewayPolicy,
    SimulationConfig,
    World,
    reference_policy,
    simulate,
    summarise,
)
from tests.gateway.conftest import build_bundle, gateway_settings, start_stages
from tests.research.test_simulate import wait_until_served
from training.retrain import Base, RetrainConfig, read_log, retrain

pytestmark = pytest.mark.timeout(300)
WORLD = SyntheticConfig(n_users=120, n_items=150, days=6, impressions_per_user=40, seed=4)


@pytest.fixture(scope="module")
def world():
    return generate(WORLD, progress=False)


def test_uploads_reach_every_arm_at_their_time_and_reproduce(world):
    arms = (Arm("oracle"), Arm("popular"), Arm("ease"))
    config = SimulationConfig(
        days=2, users=60, arms=arms, seed=3, uploads_per_day=12, unfollow_per_day=0.3
    )

    def run():
        truth = World(world)
        policies = {arm.name: reference_policy(arm.name, world, truth, 3) for arm in arms}
        return simulate(world, policies, config, world=truth)

    rows = run()
    uploaded = rows["item"] >= world.n_items  # the world's ids after its own catalogue
    assert uploaded.any()
    assert (rows["age_s"] >= 0).all()  # never shown before its upload
    oracle, ease = rows["arm"] == "oracle", rows["arm"] == "ease"
    # The oracle ranks new tracks by their true utility at once; EASE cannot before a refit.
    assert uploaded[oracle].any()
    assert not (uploaded & ease & (rows["day"] == 0)).any()
    report = {(e["arm"], e["day"]): e for e in summarise(rows, world.n_items - 1)}
    assert report[("oracle", 0)]["fresh_share"] > 0
    second = run()
    for key in rows:
        np.testing.assert_array_equal(rows[key], second[key])


def test_a_simulation_with_uploads_against_the_real_stack_folds_them_overnight(world, tmp_path):
    """Day 1's uploads are logged, served, and folded by the overnight retrain into the bundle
    that serves day 2 (hot-reloaded by every stage), while day 2's uploads arrive live."""
    built = build_bundle(tmp_path, generate(WORLD, progress=False))
    stages, recall_service = start_stages(built)
    from gateway.server import start

    settings = gateway_settings(built, stages, clock="caller")
    gateway = start(settings)
    try:
        with CascadeClient(gateway.address, timeout_s=10.0) as client:
            cascade = GatewayPolicy(client)
            retrained = []

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
                            uploads=read_uploads(settings.event_log),
                        )
                    )
                    wait_until_served(client, "day2")

            arms = (Arm("cascade"), Arm("oracle"))
            config = SimulationConfig(
                days=2, users=40, arms=arms, seed=2, uploads_per_day=10, unfollow_per_day=0.3
            )
            truth = World(world)
            policies = {"cascade": cascade, "oracle": reference_policy("oracle", world, truth, 2)}
            rows = simulate(world, policies, config, overnight, world=truth)
        assert cascade.rejected == 0  # events on uploaded tracks were accepted too
        log = gateway.service.log
        uploads = log.read_records("uploads")
        assert uploads["item_id"].to_pylist() == list(range(world.n_items, world.n_items + 20))
        assert log.read_records("follows").num_rows > 0
        # Day 1's uploads are in the retrained bundle's tables (recall's fresh table), and after
        # the reload every stage's store still holds all of them (day 2's arrived live).
        bundle = Bundle.open(built.artifacts, "day2")
        fresh = bundle.load_npz("recall", "fresh.npz")["item_ids"]
        assert set(range(world.n_items, world.n_items + 10)) <= set(fresh.tolist())
        assert not set(range(world.n_items + 10, world.n_items + 20)) & set(fresh.tolist())
        store = recall_service.state.store  # the reloaded one
        assert store.known_items(np.arange(world.n_items, world.n_items + 20)).all()
        # Each stage keeps only what its bundle lacks for the next reload: day 2's uploads. The
        # bundle itself carries day 1's, so a stage started on it without the log knows them.
        assert recall_service.updates.held()[0] == 10
        fresh_store = InMemoryFeatureStore.from_split(
            world, build_spec(world), split_dataset(world)
        )
        assert load_bundle_uploads(fresh_store, bundle) == 10
        assert fresh_store.known_items(np.arange(world.n_items, world.n_items + 10)).all()
        assert retrained[0]["served_impressions"] > 0
        served = rows["arm"] == "cascade"
        assert served.sum() >= 20
        start_s = (truth.end_ts // DAY + 1) * DAY
        assert uploads["upload_ms"].to_numpy().min() >= start_s * 1000
        report = summarise(rows, world.n_items - 1)
        assert {e["day"] for e in report} == {0, 1}
    finally:
        gateway.stop(0)
        gateway.service.close()
        for server in stages.values():
            server.stop(0)


def test_ease_with_the_traffic_pool_shows_uploads_ease_alone_cannot(world):
    """The ease+pool arm runs the gateway's controller (cascade/traffic_pool.py) on EASE's pages:
    on day 0, before any refit, its pool slots deliver uploads toward K, EASE's pages none; and
    the cold-start report counts delivered impressions by upload age and followers' first hour."""
    from cascade.traffic_pool import PoolSettings
    from research.two_sided_metrics import cold_start

    arms = (Arm("ease"), Arm("ease+pool"))
    config = SimulationConfig(days=2, users=80, arms=arms, seed=5, uploads_per_day=6)
    truth = World(world)
    pool = PoolSettings(target=3)
    policies = {arm.name: reference_policy(arm.name, world, truth, 5, pool) for arm in arms}
    rows = simulate(world, policies, config, world=truth)
    uploaded = rows["item"] >= world.n_items
    day0 = rows["day"] == 0
    pooled, ease = rows["arm"] == "ease+pool", rows["arm"] == "ease"
    assert not (uploaded & ease & day0).any()
    slots = rows["explored"].astype(bool)
    assert (slots & pooled & uploaded & day0).sum() >= 6  # the pool showed day 0's uploads
    assert not (slots & ease).any() and (uploaded[slots]).all()  # slots hold uploads only
    # A user is given an upload once; the page keeps its size and no duplicate.
    for session in np.unique(rows["session"][pooled]).tolist():
        items = rows["item"][rows["session"] == session]
        assert len(items) == config.page_size and len(set(items.tolist())) == len(items)
    given = rows["user"][slots], rows["item"][slots]
    assert len(set(zip(given[0].tolist(), given[1].tolist(), strict=True))) == slots.sum()
    start = (truth.end_ts // DAY + 1) * DAY
    report = cold_start(rows, truth, start, config.days, pool.target)
    by_age = [b["age_h"] for b in report["by_age"]]
    assert by_age == [1, 6, 12, 24] and report["uploads"] >= 1
    means = [b["mean_impressions"] for b in report["by_age"]]
    assert means == sorted(means)  # impressions by an age only grow with it
    assert report["followers_with_session_1h"] >= report["followers_shown_1h"] >= 0
