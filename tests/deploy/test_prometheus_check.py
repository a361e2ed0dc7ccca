"""The real thing: Prometheus scrapes a local stack with faults injected, and every recording rule
and Grafana panel query returns data (about 20 s). Runs where Debian's prometheus is installed and
a trained bundle is published in artifacts/; `python -m deploy.check_prometheus` is the same."""

from __future__ import annotations

import json
import shutil

import pytest

from app.stack import bundle_dataset
from deploy.check_prometheus import ROOT, main

ARTIFACTS = ROOT / "artifacts"
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("promtool")),
        reason="Debian's prometheus package is not installed (make system-packages)",
    ),
    pytest.mark.skipif(
        bundle_dataset(ARTIFACTS) is None, reason="no bundle in artifacts/: cascade train all"
    ),
]


def test_every_rule_and_panel_query_has_data_against_a_real_prometheus(tmp_path):
    argv = [
        "--out",
        str(tmp_path),
        "--artifacts",
        str(ARTIFACTS),
        "--data-dir",
        str(ROOT / "data"),
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
