"""The quota search and the channel ablation: their mixes are valid recall quotas, their users
come from the right splits, and their reports keep a channel unless its interval is below 0."""

import numpy as np
import pytest

from bench.channel_ablation import served_quotas, to_markdown, without
from bench.quota_search import to_quotas, tuning_users
from cascade.data.synthetic import SyntheticConfig, generate
from research import evaluation_e2e
from research.evaluation_e2e import Protocol, held_out_users
from services.recall.server import RecallSettings


def test_a_channel_left_out_gives_its_quota_to_the_others_in_proportion():
    quotas = served_quotas("default")
    assert quotas == {name: b.quota for name, b in RecallSettings().budgets().items()}
    rest = without(quotas, "mf")
    assert "mf" not in rest and sum(rest.values()) == pytest.approx(sum(quotas.values()))
    assert rest["two_tower"] / rest["item_cf"] == pytest.approx(0.25 / 0.15)


def test_searched_quotas_are_rounded_shares_of_one():
    names = ["mf", "two_tower", "item_cf"]
    quotas = to_quotas(names, np.array([0.0, np.log(2.0), np.log(7.0)]))
    assert quotas == {"mf": 0.1, "two_tower": 0.2, "item_cf": 0.7}
    assert sum(to_quotas(names, np.array([3.1, -2.0, 0.4])).values()) == pytest.approx(1, abs=2e-3)


def test_tuning_users_are_disjoint_from_every_headline_sample_and_from_each_other(monkeypatch):
    # A world of 160 users: headline samples of 5, 10 and 20, a loop of 20 users.
    monkeypatch.setattr(evaluation_e2e, "HEADLINE_SAMPLES", (5, 10, 20))
    monkeypatch.setattr(evaluation_e2e, "LOOP_USERS", 20)
    world = generate(SyntheticConfig(n_users=160, n_items=150, days=6, seed=4), progress=False)
    search, confirm = tuning_users(world, 15, 10, seed=0)
    held = held_out_users(world)
    assert len(search) == 15 and len(confirm) == 10 and not np.isin(search, confirm).any()
    assert not np.isin(np.r_[search, confirm], held).any()
    headline = Protocol.build(world, 20, 0).users
    assert not np.isin(np.r_[search, confirm], headline).any()
    again = tuning_users(world, 15, 10, seed=0)
    assert np.array_equal(again[0], search) and np.array_equal(again[1], confirm)
    with pytest.raises(ValueError, match="tuning users asked"):
        tuning_users(world, 10_000, 1, seed=0)


def test_the_ablation_keeps_a_channel_unless_its_upper_bound_is_below_zero():
    def row(name, low, high):
        paired = {
            "mean_difference": (low + high) / 2,
            "ci95_low": low,
            "ci95_high": high,
            "users_better": 2,
            "users_worse": 3,
        }
        return {
            "config": f"without {name}",
            "true engagement@10": 0.4,
            "degraded_answers": 0,
            "contribution": paired,
            "keeps_place": high >= 0,
        }

    mix = {"slot_share": 0.5, "engagement_tagged": 0.05, "engagement_others": 0.04}
    report = {
        "users": 5,
        "seed": 0,
        "bundle": "artifacts/synthetic",
        "profile": {"name": "default"},
        "rows": [
            {
                "config": "all",
                "true engagement@10": 0.4,
                "degraded_answers": 0,
                "page_channels": {"mf": mix},
            },
            row("mf", -0.03, -0.01),
            row("social", -0.01, 0.02),
        ],
    }
    text = to_markdown(report)
    assert "| without mf | 0.4000 | -0.0200 | [-0.0300, -0.0100] | 3 / 2 | no | 0 |" in text
    assert "| without social | 0.4000 | +0.0050 | [-0.0100, +0.0200] | 3 / 2 | yes | 0 |" in text
    assert "| mf | 0.500 | 0.0500 | 0.0400 |" in text
