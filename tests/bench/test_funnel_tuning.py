"""The funnel-tuning grid: its quota configurations are valid recall settings and its report
names a configuration better than the default only when the paired interval clears zero."""

import pytest

from bench.funnel_tuning import CONFIGS, START, clearly_better, cut, mf_quota, to_markdown
from cascade import topology
from cascade.config import load_settings
from services.recall.server import RecallSettings


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7, 1.0])
def test_an_mf_share_is_a_recall_setting_with_quotas_summing_to_one(share):
    prefix = topology.spec("recall").env_prefix
    settings = load_settings(RecallSettings, env_prefix=prefix, environ=mf_quota(share))
    quotas = {name: budget.quota for name, budget in settings.budgets().items()}
    assert quotas["mf"] == share
    assert sum(quotas.values()) == pytest.approx(1.0, abs=1e-3)
    # The other channels keep their default proportions (two-tower 0.25 : item-CF 0.15).
    if share < 1:
        assert quotas["two_tower"] / quotas["item_cf"] == pytest.approx(0.25 / 0.15, rel=1e-2)


def test_the_default_share_reproduces_the_default_quotas_and_the_grid_has_a_reference():
    defaults = {name: budget.quota for name, budget in RecallSettings().budgets().items()}
    assert {k: float(v) for k, v in mf_quota(defaults["mf"]).items()} == {
        f"CASCADE_RECALL_{name.upper()}_QUOTA": pytest.approx(q) for name, q in defaults.items()
    }
    assert CONFIGS["default"][1] == START and CONFIGS["rank-50"][1] == START | cut("rank", 50)


def test_the_report_calls_a_row_better_only_when_its_paired_interval_clears_zero():
    def row(name, low, high):
        return {
            "config": name,
            "changes": name,
            "true engagement@10": 0.5,
            "ci95": (0.4, 0.6),
            "vs_EASE": 1.1,
            "degraded_answers": 0,
            "gateway_p50_ms": 40.0,
            "vs_default": {
                "mean_difference": (low + high) / 2,
                "ci95_low": low,
                "ci95_high": high,
                "users_better": 3,
                "users_worse": 1,
            },
        }

    report = {
        "users": 4,
        "seed": 0,
        "split": "validation",
        "page": 10,
        "EASE": {"true engagement@10": 0.45, "ci95": (0.4, 0.5)},
        "rows": [row("wins", 0.001, 0.02), row("overlaps", -0.01, 0.02)],
    }
    assert clearly_better(report["rows"][0]) and not clearly_better(report["rows"][1])
    text = to_markdown(report)
    assert "Clearly better than the default (paired interval above 0): wins." in text
    assert "| overlaps | overlaps | 0.5000 | [0.4000, 0.6000] | 1.100 | +0.0050" in text


def test_the_item_cf_and_rerank_rows_are_valid_settings():
    from bench.funnel_tuning import EASE_CF, channel_quota, item_cf, theta
    from services.rerank.server import RerankSettings

    def load(cls, service, environ):
        return load_settings(cls, env_prefix=topology.spec(service).env_prefix, environ=environ)

    recall = load(RecallSettings, "recall", item_cf(EASE_CF, 0.7))
    quotas = {name: budget.quota for name, budget in recall.budgets().items()}
    assert recall.bundle == EASE_CF and quotas["item_cf"] == 0.7
    assert sum(quotas.values()) == pytest.approx(1.0, abs=1e-3)
    assert channel_quota("mf", 0.5) == mf_quota(0.5)
    assert load(RerankSettings, "rerank", theta(1.0)).rerank.dpp_trade_off == 1.0
