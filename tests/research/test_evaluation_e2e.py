"""The end-to-end table's scoring: the same rule for the cascade's pages and the baselines'."""

import numpy as np
import pytest

from cascade.data.synthetic import SyntheticConfig, generate
from research.evaluation_e2e import (
    Funnel,
    K,
    Protocol,
    evaluated_protocol,
    gateway_funnel,
    held_out_users,
    paired_difference,
    paired_lines,
    verdict,
)
from research.simulate import SimulationConfig, simulated_users
from tests.conftest import make_tiny_dataset


def test_a_page_of_exactly_the_test_items_scores_one_and_an_empty_page_zero():
    protocol = Protocol.build(make_tiny_dataset(n_users=20, n_items=40, n_events=400), None, 0)
    assert len(protocol.users) > 0
    perfect = np.zeros((len(protocol.users), K), np.int64)
    for row, user in enumerate(protocol.users.tolist()):
        items = protocol.relevant.items[
            protocol.relevant.indptr[user] : protocol.relevant.indptr[user + 1]
        ]
        perfect[row, : len(items[:K])] = items[:K]
    best = protocol.score(perfect)
    assert best["NDCG@10"] == 1.0 and best["Recall@20"] == 1.0
    empty = protocol.score(np.zeros_like(perfect))
    assert empty["NDCG@10"] == 0.0 and empty["Recall@20"] == 0.0
    assert empty["short_pages"] == len(protocol.users)


def test_seen_items_are_never_relevant_and_sampling_is_seeded():
    dataset = make_tiny_dataset(n_users=20, n_items=40, n_events=400)
    protocol = Protocol.build(dataset, None, 0)
    for user in protocol.users.tolist():
        seen = protocol.seen.items[protocol.seen.indptr[user] : protocol.seen.indptr[user + 1]]
        relevant = protocol.relevant.items[
            protocol.relevant.indptr[user] : protocol.relevant.indptr[user + 1]
        ]
        assert not np.isin(relevant, seen).any()
    first = Protocol.build(dataset, 5, seed=1).users
    assert len(first) == 5 and np.array_equal(first, Protocol.build(dataset, 5, seed=1).users)


def test_verdict_states_the_gap_to_each_baseline():
    rows = [
        {"model": "cascade", "NDCG@10": 0.2},
        {"model": "EASE", "NDCG@10": 0.25},
        {"model": "ItemKNN", "NDCG@10": 0.1},
    ]
    text = verdict(rows)
    assert "falls short of EASE by 0.0500 (-20.0%)" in text
    assert "beats ItemKNN by 0.1000 (+100.0%)" in text


def test_paired_difference_has_the_mean_and_a_bootstrap_interval_around_it():
    rng = np.random.default_rng(0)
    theirs = {"NDCG@10": rng.random(500), "Recall@20": rng.random(500)}
    lift = rng.normal(0.05, 0.1, 500)
    mine = {"NDCG@10": theirs["NDCG@10"] + lift, "Recall@20": theirs["Recall@20"].copy()}
    paired = paired_difference(mine, theirs, seed=0)
    ndcg = paired["NDCG@10"]
    assert ndcg["mean_difference"] == round(float(lift.mean()), 5)
    assert ndcg["ci95_low"] < lift.mean() < ndcg["ci95_high"]
    assert 0 < ndcg["ci95_low"] and ndcg["ci95_high"] - ndcg["ci95_low"] < 0.03  # ~4 std errors
    assert paired["Recall@20"] == {
        "mean_difference": 0.0,
        "ci95_low": 0.0,
        "ci95_high": 0.0,
        "ratio": 1.0,
        "users_better": 0,
        "users_worse": 0,
    }
    assert paired_difference(mine, theirs, seed=0) == paired  # seeded
    lines = "\n".join(paired_lines({"EASE": paired}))
    assert f"| EASE | NDCG@10 | {ndcg['mean_difference']:+.4f} |" in lines


def test_per_user_metrics_average_to_the_table():
    protocol = Protocol.build(make_tiny_dataset(n_users=20, n_items=40, n_events=400), None, 0)
    pages = np.random.default_rng(1).integers(1, 40, size=(len(protocol.users), K))
    per_user, table = protocol.per_user(pages), protocol.score(pages)
    assert np.isclose(per_user["NDCG@10"].mean(), table["NDCG@10"])
    assert np.isclose(per_user["Recall@20"].mean(), table["Recall@20"])


def test_the_truth_scores_a_page_by_the_worlds_expected_engagement_at_each_slot():
    from cascade.data.synthetic import SyntheticConfig, generate
    from research.evaluation_e2e import TRUTH, TRUTH_NOTE, to_markdown, true_engagement
    from research.simulate import World

    world = World(generate(SyntheticConfig(n_users=40, n_items=60, days=4, seed=2), False))
    users = np.array([3, 7])
    items = np.arange(1, world.n_items)
    best = np.stack([items[np.argsort(-world.utility(u, items))][:K] for u in users.tolist()])
    worst = best[:, ::-1].copy()
    got = true_engagement(world, users, best)
    by_hand = world.expected_engagement(world.utility(3, best[0, :10]), np.arange(10)).sum() / 10
    assert got[0] == np.float64(by_hand)
    assert (got > true_engagement(world, users, worst)).all()  # the truth's order wins
    half = best.copy()
    half[:, 5:] = 0  # empty slots engage no one: less than the full page
    assert (true_engagement(world, users, half) < got).all()
    rows = [
        {
            "dataset": "synthetic",
            "model": m,
            "n_test_users": 2,
            TRUTH: v,
            "NDCG@10": 0.1,
            "Recall@20": 0.1,
            "Coverage@20": 0.1,
            "ILD@20": 0.1,
        }
        for m, v in (("cascade", 0.5), ("EASE", 0.4), ("ItemKNN", 0.3))
    ]
    text = to_markdown(rows, {"synthetic": {}})
    assert f"| model | users | {TRUTH} | NDCG@10" in text and TRUTH_NOTE in text


def test_the_validation_split_never_holds_a_headline_test_user_or_a_loop_user(monkeypatch):
    from research import evaluation_e2e

    # Scaled down to a world of 120 users: headline samples of 5 and 10, a loop of 20 users.
    monkeypatch.setattr(evaluation_e2e, "HEADLINE_SAMPLES", (5, 10))
    monkeypatch.setattr(evaluation_e2e, "LOOP_USERS", 20)
    world = generate(SyntheticConfig(n_users=120, n_items=150, days=6, seed=4), progress=False)
    held = held_out_users(world)
    loop = simulated_users(world, SimulationConfig(users=20, seed=0))
    headline = [Protocol.build(world, n, 0).users for n in (5, 10)]
    assert np.isin(loop, held).all() and all(np.isin(h, held).all() for h in headline)
    validation = evaluated_protocol(world, "validation", None, seed=0).users
    assert len(validation) > 20 and not np.isin(validation, held).any()
    eligible = Protocol.build(world, None, 0).users
    assert sorted({*validation, *eligible[np.isin(eligible, held)]}) == eligible.tolist()
    sampled = evaluated_protocol(world, "validation", 15, seed=0).users
    assert np.array_equal(sampled, evaluated_protocol(world, "validation", 15, seed=0).users)
    assert len(sampled) == 15 and not np.isin(sampled, held).any()


def test_a_dataset_whose_headline_takes_every_user_has_no_validation_split():
    tiny = make_tiny_dataset(n_users=40, n_items=40, n_events=800)  # samples of 500: everyone
    with pytest.raises(ValueError, match="the validation split is empty"):
        evaluated_protocol(tiny, "validation", None, seed=0)
    test = Protocol.build(tiny, 10, seed=0).users
    rest = Protocol.build(tiny, None, seed=1, exclude=test).users
    assert len(rest) > 0 and not np.isin(rest, test).any()


def test_the_funnel_is_the_served_profiles_with_the_environment_above():
    from cascade.profiles import evaluation_profile, load_profile

    lift, ask_twice = load_profile("simulated-lift"), evaluation_profile("ask-twice")
    assert gateway_funnel({}, [load_profile("default"), ask_twice]) == Funnel(2000, 500, 50)
    assert gateway_funnel({}, [lift, ask_twice]) == Funnel(200, 200, 50)
    assert gateway_funnel({"CASCADE_GATEWAY_PRERANK_COUNT": "100"}, [lift]).prerank == 100


def test_the_report_says_which_profile_was_served_and_what_the_evaluation_changed():
    from cascade.profiles import ABOUT, evaluation_profile, load_profile
    from research.evaluation_e2e import served_lines

    served, evaluation = load_profile("default"), evaluation_profile("ask-twice")
    info = {
        "profile": served.record(),
        "evaluation_profile": evaluation.record()
        | {"changes": {k: v for k, v in evaluation.tables.items() if k != ABOUT}, "why": "w"},
    }
    line = served_lines(info)[0]
    assert line.startswith("Served: profile default (`cascade up --profile default`")
    assert f"sha256 {served.sha256[:12]}" in line
    assert "evaluation profile ask-twice" in line and '"filter_shown": false' in line
