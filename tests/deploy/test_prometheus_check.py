"""The real thing: Prometheus scrapes a local stack with faults injected, and every recording rule
and Grafana panel query returns data (about 20 s). Runs where Debian's prometheus is installed, on
the suite's tiny bundle (every stage trained: tests/conftest.py `built`), so never on what a
developer left in artifacts/; `python -m deploy.check_prometheus` is the same on the real one."""

from __future__ import annotations

import json
import shutil

import pytest

from deploy.check_prometheus import main

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("promtool")),
        reason="Debian's prometheus package is not installed (make system-packages)",
    ),
]


def test_every_rule_and_panel_query_has_data_against_a_real_prometheus(built, tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--artifacts",
        str(built.artifacts),
        "--data-dir",
        str(built.data_dir),
        "--traffic-s",
        "8",
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "prometheus_check.json").read_text())
    assert report["ok"] and report["empty"] == [] and report["failing_rules"] == []
    assert all(q["ok"] for q in report["queries"]) and len(report["queries"]) > 60
    traffic = report["traffic"]
    assert traffic["recommend"]["ok"] > 0 and traffic["recommend"]["INVALID_ARGUMENT"] > 0
    assert traffic["feedback_events"]["accepted"] > 0
    # The injected faults show up as series: the paused stage's fallbacks and its failed scrape.
    paused = traffic["paused"]["stage"]
    fallbacks = next(
        q for q in report["queries"] if q["name"] == "stage_reason:cascade_gateway_degraded:rate1m"
    )
    assert fallbacks["series"] >= 2  # NO_BUDGET (tiny deadlines) and the pause's reason
    assert paused in {r["metric"]["stage"] for r in report["down_seen"]}
