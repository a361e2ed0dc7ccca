"""The simulation report: the headline ratios and their intervals, and the retraining table."""

import pytest

from research import loop_report
from research.loop_report import headline, to_markdown


def row(arm, day, value, half):
    return {"arm": arm, "day": day, "expected_engagement": value, "expected_ci95": half}


def test_the_headline_compares_the_cascade_with_ease_and_with_its_first_day():
    rows = [
        row("cascade", 0, 0.30, 0.03),
        row("ease", 0, 0.40, 0.04),
        row("cascade", 2, 0.46, 0.046),
        row("ease", 2, 0.40, 0.04),
    ]
    got = headline(rows)
    assert got["cascade_vs_ease_last_day"]["ratio"] == pytest.approx(1.15)
    # Delta method: both arms +-10% relative -> the ratio +-sqrt(2) * 10%.
    assert got["cascade_vs_ease_last_day"]["ci95"] == pytest.approx(1.15 * 0.1 * 2**0.5, abs=1e-4)
    assert got["cascade_last_vs_first_day"]["ratio"] == pytest.approx(0.46 / 0.30, abs=1e-4)
    assert headline([row("ease", 0, 0.4, 0.04)]) == {}  # no cascade arm: no headline


def test_rising_is_measured_as_the_fraction_of_the_oracle_random_gap():
    """The oracle falls from 1.0 to 0.8 as users use up their best items: the cascade's raw
    engagement falls too (0.46 -> 0.41) while it closes more of the gap (0.4 -> 0.45)."""
    rows = [
        row("random", 0, 0.10, 0.0),
        row("oracle", 0, 1.00, 0.0),
        row("cascade", 0, 0.46, 0.018),
        row("random", 1, 0.10, 0.0),
        row("oracle", 1, 0.80, 0.0),
        row("cascade", 1, 0.415, 0.014),
    ]
    got = headline(rows)
    assert got["cascade_last_vs_first_day"]["ratio"] < 1
    gap = got["cascade_gap_last_vs_first_day"]
    assert gap["ratio"] == pytest.approx(0.45 / 0.40, abs=1e-4)
    # Only the cascade varies here: each gap +-0.02 (its half-width over the oracle-random range).
    assert gap["ci95"] == pytest.approx(
        1.125 * ((0.02 / 0.4) ** 2 + (0.02 / 0.45) ** 2) ** 0.5, abs=1e-4
    )


def test_the_markdown_lists_each_retraining_job():
    entry = {
        **row("cascade", 0, 0.3, 0.03),
        "impressions": 10,
        "realised_engagement": 0.2,
        "realised_ci95": 0.1,
        "coverage": 0.1,
        "creator_gini": 0.5,
        "fresh_share": 0.0,
    }
    job = {
        "after_day": 0,
        "version": "loop-day2",
        "served_impressions": 130,
        "plays_heard": 24,
        "rank": {
            "validation_logloss_before": 0.40388,
            "validation_logloss_after": 0.37691,
            "gate": {"publish": False, "served_logloss": 0.3012, "new_logloss": 0.3105},
        },
        "seconds": 147.0,
        "reload_seconds": 7.0,
    }
    report = {
        "config": {"users": 100, "days": 2, "sessions_per_day": 1.0, "retrain": "daily"},
        "seconds": 1.0,
        "rows": [entry],
        "headline": {},
        "retraining": [job],
    }
    text = to_markdown(report)
    assert (
        "| 0 | loop-day2 | 130 | 24 | 0.4039 | 0.3769 | 0.3012 | 0.3105 | kept | 147.0 | 7.0 |"
        in text
    )


def test_two_runs_compare_one_arm_day_by_day():
    from research.compare_runs import compare

    def run(values, seed=0):
        rows = [
            {**row("cascade", d, v, v / 10), "oracle_gap_closed": v} for d, v in enumerate(values)
        ]
        return {"config": {"seed": seed, "users": 10}, "rows": rows}

    got = compare(run([0.4, 0.44]), run([0.4, 0.4]), "cascade")
    assert [r["ratio"] for r in got] == [1.0, 1.1]
    assert got[1]["ci95"] == pytest.approx(1.1 * 0.1 * 2**0.5, abs=1e-4)
    with pytest.raises(ValueError, match="seed or users"):
        compare(run([0.4]), run([0.4], seed=1), "cascade")


def test_the_simulated_lift_profile_is_the_stack_bench_loop_names():
    """deploy/profiles/simulated-lift.toml holds the tuned stack `make bench-loop` serves; the
    simulator's default is the synthetic world's default profile (the services' defaults)."""
    from app.loop import parse
    from app.profiles import server
    from cascade.profiles import variable

    args = parse(["--profile", "simulated-lift"])
    environ = variable([args.served_profile])

    def settings(service):
        return server(service).resolve(environ=environ)[0]

    quotas = {name: budget.quota for name, budget in settings("recall").budgets().items()}
    assert quotas["item_cf"] == 1.0 and sum(quotas.values()) == pytest.approx(1.0)
    assert settings("rerank").rerank.dpp_trade_off == 1.0
    gateway = settings("gateway")
    assert (gateway.recall_count, gateway.prerank_count, gateway.rank_count) == (200, 200, 50)
    assert args.item_cf == "ease"  # its [train] table: recall's item-CF table from EASE
    default = parse([])
    # the synthetic world's own profile: the services' defaults less the MF channel
    assert default.served_profile.name == "synthetic" and default.item_cf == "co_consumption"
    for argv in (["--set", "CASCADE_RERANK_RERANK_DPP_TRADE_OFF=0.9"], ["--profile", "nope"]):
        with pytest.raises(SystemExit):
            parse(argv)


def test_the_simulator_refuses_a_served_setting_its_profile_does_not_say(tmp_path, monkeypatch):
    from app import loop, stack

    monkeypatch.setenv("CASCADE_RECALL_MF_QUOTA", "0.5")
    run_dir = tmp_path / "run"
    args = loop.parse(["--data-dir", str(tmp_path), "--run-dir", str(run_dir)])
    with pytest.raises(stack.StackError) as refused:
        loop.run(args)
    message = str(refused.value)
    assert "serves exactly profile synthetic" in message
    assert "CASCADE_RECALL_MF_QUOTA=0.5 (recall.mf.quota)" in message
    assert not run_dir.exists()  # refused before any bundle copy or process


def test_an_arm_deviating_from_the_profile_is_served_and_named_in_the_report():
    from app import loop, stack
    from gateway.arms import Arm
    from research.simulate import SimulationConfig

    args = loop.parse(["--arms", "cascade", "no-pool", "random"])
    config = SimulationConfig(arms=tuple(Arm(name) for name in args.arms))
    extra = loop.harness(5) | loop.gateway_arms(args, config)
    stack.check_profiles([args.served_profile], extra, exact=True)  # the arm is the harness's
    record = loop.served_profile(args, 5)
    assert record["name"] == "synthetic" and len(record["sha256"]) == 64
    assert record["arms"] == {"no-pool": {"pool": {"slots": 0}}}
    assert record["harness"] == {
        "CASCADE_GATEWAY_CLOCK": "caller",
        "CASCADE_GATEWAY_POOL_TARGET": "5",  # K scaled to the simulated audience
    }
    words = loop_report.profile_words(record)
    assert "the cascade serves profile synthetic" in words
    assert 'arm no-pool deviates from it by {"pool": {"slots": 0}}' in words
    # The ease+pool arm runs the profile's pool with the same K.
    assert loop.pool_settings(args.served_profile, 5).target == 5
    assert loop.pool_settings(args.served_profile, 5).slots == 1


def test_the_markdown_gives_cascade_over_ease_for_every_day():
    from research.loop_report import per_day_vs_ease

    rows = [row("cascade", 0, 0.30, 0.03), row("ease", 0, 0.25, 0.025)]
    rows += [
        row("cascade", 1, 0.44, 0.044),
        row("ease", 1, 0.40, 0.04),
        row("random", 1, 0.1, 0.01),
    ]
    got = per_day_vs_ease(rows)
    assert [r["day"] for r in got] == [0, 1]
    assert got[0]["ratio"] == pytest.approx(1.2) and got[1]["ratio"] == pytest.approx(1.1)
    assert got[1]["ci95"] == pytest.approx(1.1 * 0.1 * 2**0.5, abs=1e-4)


def test_the_no_pool_arm_mirrors_the_simulations_arms_on_the_gateway():
    import json

    from app.loop import arguments, gateway_arms
    from gateway.arms import Arm, assign, parse_arms
    from research.simulate import SimulationConfig

    args = arguments().parse_args(["--arms", "cascade", "no-pool", "oracle", "ease+pool"])
    config = SimulationConfig(arms=tuple(Arm(name) for name in args.arms))
    env = gateway_arms(args, config)
    arms = parse_arms(env["CASCADE_GATEWAY_ARMS"])
    assert [a.name for a in arms] == ["cascade", "no-pool", "oracle", "ease+pool"]
    assert arms[1].overrides == {"pool": {"slots": 0}}
    salt = env["CASCADE_GATEWAY_ARM_SALT"]
    for user in range(200):  # the gateway assigns each user the simulation's arm
        assert (
            assign(salt, str(user), arms).name == assign(config.salt, str(user), config.arms).name
        )
    plain = arguments().parse_args(["--arms", "cascade", "oracle"])
    assert gateway_arms(plain, config) == {}  # no no-pool arm: the gateway as configured
    assert json.loads(env["CASCADE_GATEWAY_ARMS"])[0] == {"name": "cascade", "share": 1.0}


def test_the_markdown_compares_the_cascade_with_the_no_pool_arm_per_day():
    def entry(arm, value, half, **extra):
        return {
            **row(arm, 0, value, half),
            "impressions": 100,
            "realised_engagement": value,
            "realised_ci95": half,
            "coverage": 0.1,
            "creator_gini": 0.5,
            "fresh_share": 0.1 if arm == "cascade" else 0.0,
            "organic_fresh_share": 0.0,
            "organic_upload_share": 0.002,
            **extra,
        }

    rows = [
        entry("no-pool", 0.40, 0.04),
        entry("cascade", 0.44, 0.044, explored_share=0.1, explored_expected=0.05),
    ]
    report = {
        "config": {"users": 100, "days": 1, "sessions_per_day": 1.0, "pool_target": 5},
        "seconds": 1.0,
        "rows": rows,
        "headline": {},
    }
    text = to_markdown(report)
    assert "| 0 | no-pool | 0.000 | 0.000 | 0.000 | 0.0020 | 0.4000 | 0.0400 | - | - | - |" in text
    # The ratio 1.1 with both arms +-10%: +-1.1 * sqrt(2) * 10% = 0.156.
    assert (
        "| 0 | cascade | 0.100 | 0.100 | 0.000 | 0.0020 | 0.4400 | 0.0440 | 0.0500 | 1.100 " in text
    )
    assert "K = 5" in text
    assert "| 0.156 |" in text
