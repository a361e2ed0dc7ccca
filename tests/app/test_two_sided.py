"""The two-sided benchmark at a tiny size (the reference arms, no stack): one world per arm,
every two-sided metric per day, a report that names its world, and a run that resumes from its
per-day checkpoints exactly where it stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import two_sided
from cascade.data import load_dataset, prepare
from cascade.data.synthetic import SyntheticConfig
from gateway.arms import Arm
from research.simulate import SimulationConfig, World, reference_policy, simulate

pytestmark = pytest.mark.timeout(300)
WORLD = {"n_users": 150, "n_items": 200, "n_creators": 20, "days": 5, "impressions_per_user": 40}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    prepare("synthetic", folder, seed=3, **WORLD)
    return folder


def test_the_tiny_benchmark_reports_both_sides_per_arm_and_day(data_dir, tmp_path):
    argv = ["--data-dir", str(data_dir), "--days", "2", "--users", "60", "--retrain", "never"]
    argv += ["--arms", "random", "popular", "oracle", "ease+pool"]
    argv += ["--neutral-arms", "random", "oracle"]
    argv += ["--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    two_sided.main(argv)
    report = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert (tmp_path / "out" / "simulation.png").stat().st_size > 10_000
    world = SyntheticConfig(**load_dataset("synthetic", data_dir).meta["config"])
    assert report["world"]["hash"] == world.world_hash()
    assert report["exposure_target"]["K"] == round(100 * 60 / 150)
    runs = {(r["world"], r["arm"]): r for r in report["runs"]}
    two = {("two-sided", arm) for arm in ("random", "popular", "oracle", "ease+pool")}
    assert set(runs) == two | {("neutral", "random"), ("neutral", "oracle")}
    for run in runs.values():
        assert [d["day"] for d in run["days"]] == [0, 1]
        last = run["days"][-1]
        assert last["uploads"] > 0 and last["uploads_excluded"] == last["uploads"]  # < 24 h left
        assert run["days"][0]["uploads_excluded"] == 0
        for key in ("expected_ci95", "fresh_share", "coverage", "creator_gini", "never_played"):
            assert run["days"][0][key] is not None
    oracle, random = runs["two-sided", "oracle"]["days"][0], runs["two-sided", "random"]["days"][0]
    assert oracle["expected_engagement"] > random["expected_engagement"]
    assert oracle["oracle_gap_closed"] == pytest.approx(1.0)
    head = report["headline"]
    arms = {"random", "popular", "oracle", "ease+pool"}
    assert set(head["uploads_reaching_target_24h"]) == arms
    assert set(head["active_creators_last_day"]) == arms
    assert set(head["followers_shown_upload_1h"]) == arms
    # The ease+pool arm runs the default profile's pool with the simulation's K.
    assert report["config"]["pool"]["target"] == report["exposure_target"]["K"]
    pooled = runs["two-sided", "ease+pool"]["cold_start"]
    assert [b["age_h"] for b in pooled["by_age"]] == [1, 6, 12, 24]
    text = (tmp_path / "out" / "simulation.md").read_text()
    assert "World hash" in text and "## New uploads in their first day" in text
    # An interrupted run resumes: a run's result gone, its checkpoint left, the same report.
    (state,) = (tmp_path / "run" / "state").iterdir()  # one folder per run's options
    (state / "two-sided-oracle.json").unlink()
    two_sided.main(argv)
    again = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert again["runs"][2]["days"] == report["runs"][2]["days"]


def test_a_run_resumed_from_its_checkpoint_equals_one_never_stopped(data_dir, tmp_path):
    dataset = load_dataset("synthetic", data_dir)
    arms = (Arm("random"), Arm("popular"), Arm("oracle"))

    def run(days: int, checkpoint=None):
        config = SimulationConfig(days=days, users=50, arms=arms, seed=2, unfollow_per_day=0.2)
        world = World(dataset, audience_share=50 / 150)
        policies = {a.name: reference_policy(a.name, dataset, world, 2) for a in arms}
        return simulate(dataset, policies, config, world=world, checkpoint=checkpoint), world

    whole, world = run(3)
    run(1, tmp_path / "state.pkl")  # "interrupted" after its first day
    resumed, again = run(3, tmp_path / "state.pkl")
    for key in ("arm", "user", "item", "expected", "played"):
        np.testing.assert_array_equal(resumed[key], whole[key])
    assert again.days == world.days and len(world.days) == 3
    assert world.supply.item_ids.size > 0


def test_a_bad_pool_setting_in_the_profile_is_refused_before_any_arm_runs(tmp_path, capsys):
    bad = tmp_path / "bad-slots.toml"
    bad.write_text("[gateway.pool]\nslots = -1\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        two_sided.main(["--profile", str(bad), "--run-dir", str(run_dir), "--arms", "ease+pool"])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "pool.slots must be an integer >= 0, got -1" in error and str(bad) in error
    assert not run_dir.exists()  # no state, no stack
