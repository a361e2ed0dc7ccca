"""deploy/prometheus and deploy/grafana, offline: the committed files are what the generators make,
every metric an expression reads is one the services export (with labels they have), budgets and
ports match the code, and promtool accepts the configs, the rules and the rule unit tests."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from cascade.telemetry import RpcMetrics, new_registry, set_model_info
from cascade.topology import DEFAULT_METRICS_PORTS
from cascade.traffic_pool import PoolSettings
from deploy import generate, grafana_dashboards, prometheus_rules
from gateway.pipeline import GatewayMetrics
from gateway.pool import Pool, PoolCollector
from gateway.server import GatewaySettings
from services.prerank.server import PrerankMetrics
from services.recall.merge import ChannelMetrics
from services.rerank.server import RerankMetrics

DEPLOY = Path(generate.ROOT) / "deploy"
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
TARGET_LABELS = {"job", "instance", "stage"}  # added by the scrape config


def exported() -> dict[str, set[str]]:
    """Series name -> label names, from registries filled by the services' own metric classes."""
    registries = [new_registry(), CollectorRegistry(), CollectorRegistry(), CollectorRegistry()]
    RpcMetrics("gateway", registries[0])
    GatewayMetrics(registries[0])
    set_model_info(registries[0], "gateway", "v1")
    empty = np.zeros(0, np.int64)
    pool = Pool(lambda ids: (empty, empty))  # the gateway's traffic pool gauges, as it registers
    registries[0].register(PoolCollector(pool, PoolSettings, lambda: np.zeros(1, np.int64)))
    ChannelMetrics(registries[0])
    PrerankMetrics(registries[1])  # ModelMetrics and the prerank gauge
    RerankMetrics(registries[2])
    series: dict[str, set[str]] = {}
    for registry in registries:
        for family in registry.collect():  # collectors without describe(): process_*
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            for suffix in suffixes.get(family.type, [""]):
                series.setdefault(family.name + suffix, set())
        for name, collector in registry._names_to_collectors.items():
            labels = set(getattr(collector, "_labelnames", ()))
            series.setdefault(name, set()).update(labels)
            if name.endswith("_bucket"):
                series[name].add("le")
    series["up"] = set()
    return series


def names_in(expr: str) -> tuple[set[str], set[str], list[tuple[str, set[str]]]]:
    """(recorded rule names, raw metric names, [(metric, label names it is selected by)])."""
    selections = [
        (metric, set(MATCHER.findall(STRING.sub('""', matchers))))
        for metric, matchers in SELECTOR.findall(expr)
    ]
    bare = GROUPING.sub(" ", re.sub(r"\[[^\]]*\]", " ", STRING.sub(" ", expr)))
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    tokens = set(NAME.findall(bare))
    recorded = {t for t in tokens if ":" in t}
    raw = {t for t in tokens if t.startswith(("cascade_", "process_")) or t == "up"}
    return recorded, raw, selections


def every_expression() -> list[tuple[str, str]]:
    found = list(prometheus_rules.all_expressions())
    for name, board in grafana_dashboards.all_dashboards().items():
        found += [(f"{name}: {title}", e) for title, e in grafana_dashboards.panel_queries(board)]
    return found


def unknown_names(expr: str, series: dict[str, set[str]]) -> list[str]:
    recorded, raw, selections = names_in(expr)
    problems = [f"no recording rule {n}" for n in recorded - set(prometheus_rules.recorded_names())]
    problems += [f"no exported series {n}" for n in sorted(raw - set(series))]
    for metric, labels in selections:
        if metric in series:
            extra = labels - series[metric] - TARGET_LABELS
            problems += [f"{metric} has no label {label}" for label in sorted(extra)]
    return problems


def test_committed_rules_and_dashboards_are_what_the_generators_make():
    assert generate.stale() == []


def test_every_metric_an_expression_reads_is_exported_with_those_labels():
    series = exported()
    problems = {name: unknown_names(e, series) for name, e in every_expression()}
    assert {name: p for name, p in problems.items() if p} == {}
    assert len(every_expression()) > 60  # rules and panels were all found


def test_the_name_check_catches_typos():
    series = exported()
    assert unknown_names("rate(cascade_rpc_requestz_total[1m])", series) == [
        "no exported series cascade_rpc_requestz_total"
    ]
    assert unknown_names('cascade_candidates_total{directions="in"}', series) == [
        "cascade_candidates_total has no label directions"
    ]
    assert unknown_names("stage:cascade_model_latency_seconds:p42_1m", series) == [
        "no recording rule stage:cascade_model_latency_seconds:p42_1m"
    ]


def test_latency_budgets_are_the_gateways_deadline_shares():
    settings = GatewaySettings()
    assert prometheus_rules.END_TO_END_BUDGET_S == settings.default_deadline_s
    for stage, budget in prometheus_rules.STAGE_BUDGET_S.items():
        assert budget == pytest.approx(settings.default_deadline_s * settings.shares()[stage])


@pytest.mark.parametrize("name", ["prometheus-local.yml", "prometheus-compose.yml"])
def test_scrape_configs_target_every_service_on_its_default_metrics_port(name):
    config = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == prometheus_rules.JOB)
    assert job["honor_labels"] is True  # the services' own `stage` label must win
    targets = {e["labels"]["stage"]: e["targets"] for e in job["static_configs"]}
    assert targets == {s: [f"127.0.0.1:{port}"] for s, port in DEFAULT_METRICS_PORTS.items()}
    rules = {(DEPLOY / "prometheus" / f).resolve() for f in config["rule_files"]}
    assert rules == {(DEPLOY.parent / p).resolve() for p in prometheus_rules.files()}


def test_dashboards_use_the_provisioned_datasource_and_fit_the_grid():
    provisioning, boards = DEPLOY / "grafana" / "provisioning", DEPLOY / "grafana" / "dashboards"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://127.0.0.1:9090"
    for path in sorted(boards.glob("*.json")):
        board = json.loads(path.read_text())
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), path.name
        for p in panels:
            assert p["datasource"]["uid"] == uid and p["targets"], (path.name, p["title"])
            assert all(t["datasource"]["uid"] == uid for t in p["targets"])
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
    uids = {json.loads(p.read_text())["uid"] for p in boards.glob("*")}
    assert uids == {"cascade-overview", "cascade-stages", "cascade-models"}


NO_PROMTOOL = "promtool not installed (make system-packages: Debian's prometheus)"


@pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)
def test_promtool_accepts_configs_rules_and_the_rule_unit_tests():
    from deploy.check_prometheus import promtool_checks

    results = promtool_checks(shutil.which("promtool"))
    assert [r["command"].split()[1:3] for r in results] == [
        ["check", "config"],
        ["check", "rules"],
        ["test", "rules"],
    ]
    assert all(r["rc"] == 0 for r in results), [r["output"] for r in results if r["rc"]]
