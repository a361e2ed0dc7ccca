"""The ablation table: each variant's cascade arm per day, and its ratio to the baseline run."""

from __future__ import annotations

import pytest

from bench.debias import VARIANTS, command, table, to_markdown


def _report(first: float, last: float, ci: float = 0.02) -> dict:
    rows = []
    for day, value in enumerate((first, last)):
        rows += [
            {
                "arm": "cascade",
                "day": day,
                "impressions": 100,
                "expected_engagement": value,
                "expected_ci95": ci,
                "oracle_gap_closed": (value - 0.1) / 0.9,
            },
            {
                "arm": "random",
                "day": day,
                "impressions": 100,
                "expected_engagement": 0.1,
                "expected_ci95": ci,
                "oracle_gap_closed": 0.0,
            },
        ]
    return {"config": {"seed": 0, "users": 10, "days": 2}, "rows": rows, "seconds": 1.0}


def test_rows_hold_the_last_day_and_the_ratio_to_the_baseline():
    baseline, tower = VARIANTS[0], VARIANTS[2]
    reports = {"baseline": _report(0.40, 0.40), "position-tower": _report(0.44, 0.30)}
    rows = table((baseline, tower), reports, rank_epochs=2)
    assert [r["variant"] for r in rows] == ["baseline", "position-tower"]
    assert rows[0]["ratio_to_baseline"] == 1.0 and rows[0]["ratio_ci95"] is None
    assert rows[1]["day"] == 1 and rows[1]["expected_engagement"] == 0.30
    assert rows[1]["ratio_to_baseline"] == pytest.approx(0.75)
    assert rows[1]["ratio_ci95"] == pytest.approx(
        0.75 * ((0.02 / 0.3) ** 2 + 0.05**2) ** 0.5, abs=1e-4
    )
    assert rows[1]["per_day"][0]["ratio_to_baseline"] == pytest.approx(1.1)
    assert rows[1]["trained_by"] == (
        "cascade train rank --dataset synthetic --max-epochs 2 --position-tower"
    )
    text = to_markdown(
        {
            "config": {
                "users": 10,
                "days": 2,
                "arms": ["cascade", "random"],
                "seed": 0,
                "rank_epochs": 2,
            },
            "serving_seconds": 2.0,
            "rows": rows,
        }
    )
    assert "| b | position-tower | daily | 0.4400 ± 0.0200 | 0.378 | 1.100 ± 0." in text


def test_every_option_row_names_the_command_that_trains_it():
    commands = {v.name: command(v, 2) for v in VARIANTS}
    assert commands["logged-only"] == "(the baseline's bundle)"
    assert commands["ips"].endswith("--max-epochs 2 --ips")
    assert commands["no-logq"].endswith("--no-two-tower-logq")
    assert commands["mixed-negatives"].endswith("--two-tower-mixed-negatives 1024")


def test_each_variant_is_served_with_every_option_of_cascade_simulate(tmp_path, monkeypatch):
    """serve() parses its options with the simulator's own parser: an option added there (e.g.
    uploads per day) reaches the loop with its default instead of a missing attribute."""
    from argparse import Namespace

    from app import loop
    from bench import debias

    seen = []
    monkeypatch.setattr(loop, "run", lambda options: seen.append(options) or {})
    monkeypatch.setattr(debias, "publish", lambda root, version: None)
    args = Namespace(work=tmp_path, data_dir=tmp_path / "data", days=2, users=30, seed=4)
    debias.serve(args, VARIANTS[0])
    expected = loop.parse([])
    assert set(vars(seen[0])) == set(vars(expected))
    assert (seen[0].days, seen[0].users, seen[0].seed) == (2, 30, 4)
    assert seen[0].arms == list(debias.ARMS) and seen[0].retrain == VARIANTS[0].retrain
    assert seen[0].uploads_per_day == expected.uploads_per_day
