"""docker-compose.yml's settings on the local stack (deploy/compose_local.py): every service as a
local process with the environment the compose file gives its container (authentication on, the
gateway's event log shared through the `gateway-state` volume), on free ports with a
redis-server of its own. What `make compose-smoke` checks with Docker, checked here in seconds:
the compose check itself (deploy/compose_check.py, without the Prometheus part), uploads that
survive a kill -9 of pre-rank and rank, and every stage warmed before it reports SERVING."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app import stack
from deploy import compose_check, compose_upload
from deploy.compose_local import COMPOSE_FILE, compose_environments
from gateway.client import CascadeClient

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("redis_binary")]

TOKEN = "compose-local-t0ken"
WARMUPS = "cascade_warmup_requests_total"


@pytest.fixture(scope="module")
def compose_stack(built, tmp_path_factory) -> Iterator[stack.Stack]:
    root = tmp_path_factory.mktemp("compose")
    sources = {
        "./artifacts": built.artifacts,
        "./data": built.data_dir,
        "gateway-state": root / "gateway-state",
    }
    shell = {compose_check.TOKEN_ENV: TOKEN}
    environments = compose_environments(yaml.safe_load(COMPOSE_FILE.read_text()), sources, shell)
    options = {"artifacts": built.artifacts, "data_dir": built.data_dir, "train": False}
    with stack.running_stack(
        root / "run", store="redis", environments=environments, timeout_s=180, **options
    ) as running:
        yield running


def metrics(service: stack.Service) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics") as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_services_get_the_compose_files_settings(compose_stack, built):
    gateway = compose_stack.environments["gateway"]
    assert gateway["CASCADE_GATEWAY_API_TOKEN"] == TOKEN
    assert gateway["CASCADE_GATEWAY_REQUIRE_API_TOKEN"] == "true"
    assert gateway["CASCADE_GATEWAY_ARTIFACTS"] == str(built.artifacts)
    log = gateway["CASCADE_GATEWAY_EVENT_LOG"]
    assert log.startswith("file:") and log.endswith("gateway-state/eventlog")
    for stage in ("recall", "prerank", "rank"):
        assert compose_stack.environments[stage][f"CASCADE_{stage.upper()}_EVENT_LOG"] == log
    assert "CASCADE_GATEWAY_SERVER_REFLECTION" not in gateway  # the local stack's, not compose's


def test_every_stage_counts_its_warm_up_before_serving_and_apart_from_traffic(compose_stack):
    """Scraped before any call: SERVING (the stack waited for it) implies the warm-up ran."""
    rpcs = {"recall": "Recall", "prerank": "Prerank", "rank": "Rank", "rerank": "Rerank"}
    for service in compose_stack.services:
        if service.name not in rpcs:
            continue
        seen = metrics(service)
        warm = {labels: value for (name, labels), value in seen.items() if name == WARMUPS}
        stage = (("rpc", rpcs[service.name]), ("stage", service.name))
        assert warm.get((("outcome", "ok"), *stage), 0) >= 1, service.name
        assert warm.get((("outcome", "failed"), *stage), 0) == 0, service.name
        served = sum(
            value
            for (name, labels), value in seen.items()
            if name == "cascade_rpc_requests_total" and "Health" not in dict(labels)["rpc"]
        )
        assert served == 0, f"{service.name}: the warm-up counted as traffic ({served} calls)"


def test_the_compose_check_passes_with_the_token_and_sees_a_call_without_it_refused(
    compose_stack, monkeypatch, capsys, tmp_path
):
    """The scrape config names the local stack's metrics ports, which the check reads for the
    stages' warm-ups."""
    monkeypatch.setenv(compose_check.TOKEN_ENV, TOKEN)
    groups = [
        {"targets": [f"127.0.0.1:{s.metrics_port}"], "labels": {"stage": s.name}}
        for s in compose_stack.services
        if s.name != stack.REDIS
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump({"scrape_configs": [{"job_name": "cascade", "static_configs": groups}]})
    )
    argv = ["--config", str(config), "--gateway", compose_stack.address("gateway")]
    argv += ["--users", "30", "--requests", "20"]
    assert compose_check.main([*argv, "--no-prometheus"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "without the token: UNAUTHENTICATED" in out
    assert "warm-up requests answered before SERVING" in out


def test_an_upload_stays_recommendable_after_a_kill_9_of_prerank_and_rank(compose_stack):
    """On the compose file before its stages read the event log: {prerank: 1, rank: 1}."""
    item_id = compose_upload.add(compose_stack.address("gateway"), TOKEN)
    stages = [compose_stack.address("prerank"), compose_stack.address("rank")]
    assert compose_upload.unknown(*stages, item_id) == {"prerank": 0, "rank": 0}
    for name in ("prerank", "rank"):
        pid = next(s.pid for s in compose_stack.services if s.name == name)
        os.kill(pid, signal.SIGKILL)
        stack.restart(compose_stack, name, timeout_s=120)
    assert compose_upload.unknown(*stages, item_id) == {"prerank": 0, "rank": 0}
    # The gateway finds the restarted stages again (it ejected them while they were down).
    deadline = time.monotonic() + 30
    with CascadeClient(compose_stack.address("gateway"), timeout_s=5.0, token=TOKEN) as client:
        while (page := client.recommend(5, count=5)).degraded and time.monotonic() < deadline:
            time.sleep(0.5)
    assert len(page.items.item_ids) == 5 and not page.degraded, list(page.degraded_stages)
