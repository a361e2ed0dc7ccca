"""bench/cold_start_funnel.py on a tiny run: a synthetic world's bundle, a stack that took two
uploads and served a few pages (its event log), then the bench's own stack on them running the
gateway's funnel at the served profile's counts."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from app import stack
from bench import cold_start_funnel
from cascade.profiles import default_profile, load_profile
from gateway.client import CascadeClient
from research.evaluation_e2e import gateway_funnel

pytestmark = pytest.mark.timeout(900)
USERS = (1, 2, 3, 4)


def test_the_funnel_counts_uploads_kept_at_the_served_profiles_cuts(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    artifacts = run / "artifacts"
    make = [sys.executable, "-m", "app.cli", "data", "--source", "synthetic", "--users", "200"]
    make += ["--items", "100", "--impressions-per-user", "30", "--data-dir", str(data)]
    subprocess.run(make, check=True, capture_output=True)
    train = [sys.executable, "-m", "app.cli", "train", "all", "--dataset", "synthetic"]
    train += ["--data-dir", str(data), "--artifacts", str(artifacts), "--version", "v1"]
    subprocess.run(train, check=True, capture_output=True)  # published as artifacts/current
    last_s = int(pq.read_table(data / "synthetic" / "interactions.parquet")["ts"].to_numpy().max())
    at_ms = (last_s + 3600) * 1000
    uploads = [
        {
            "item_key": f"up-{n}",
            "creator_id": 1,
            "categories": [1],
            "upload_time_ms": at_ms - 60_000,
        }
        for n in range(2)
    ]
    options = {"artifacts": artifacts, "data_dir": data, "dataset": "synthetic", "train": False}
    caller_clock = {"CASCADE_GATEWAY_CLOCK": "caller"}
    with stack.running_stack(run, extra_env=caller_clock, **options) as running:
        with CascadeClient(running.address(), timeout_s=10) as client:
            assert client.add_items(uploads).added == 2
            for user in USERS:
                client.recommend(user, count=10, request_time_ms=at_ms)
    report = cold_start_funnel.measure(run, data, users=len(USERS))
    funnel = gateway_funnel({}, [load_profile(default_profile("synthetic"))])
    kept = report["uploaded_per_request"]
    assert list(kept) == [
        f"recall (of {funnel.recall})",
        f"prerank (of {funnel.prerank})",
        f"rank (of {funnel.rank})",
        "rank first 10",
    ]
    assert report["requests"] == len(USERS) and report["request_time_ms"] == at_ms
    assert report["uploads_in_log"] == 2 and report["degraded_requests"] == 0
    values = list(kept.values())
    assert 0 < values[0] <= 2  # recall's fresh channel finds the uploads
    assert values[0] >= values[1] >= values[2] >= values[3]  # each cut keeps a subset
    assert set(report["unknown_per_request"]) == {"prerank", "rank"}
