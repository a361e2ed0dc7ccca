"""Cascade's Prometheus recording and alert rules, as data: rendered into deploy/prometheus/rules/.

Recording rules turn the services' raw series into what dashboards and alerts read (per-stage
p50/p95/p99, QPS, error and degraded ratios, the funnel, the channel mix), named
`level:metric:operation`. Alerts: a stage down, a stage's p99 over its share of the deadline, the
error ratio, the degraded ratio. `python -m deploy.generate` writes the YAML; a test compares.
"""

from __future__ import annotations

from typing import Any

import yaml

from cascade.topology import SERVICE_SPECS, STAGES

JOB = "cascade"  # the scrape job of every Cascade service (deploy/prometheus/*.yml)
WINDOW = "1m"  # rate window: at a 5 s scrape interval, 12 samples
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# The RPC each service exists for (Gateway/Feedback and Recall/Record ride along in the rules).
MAIN_RPC = {service.name: service.rpc for service in SERVICE_SPECS}
# Health checks and reflection are infrastructure, and a shadow arm's calls (traffic="shadow")
# are never shown to a user: neither is served traffic.
SERVICE_RPCS = 'rpc!~"grpc\\\\..*", traffic!="shadow"'
# The caller's mistakes and cancellations are not the service's errors.
CALLER_CODES = (
    "OK|INVALID_ARGUMENT|NOT_FOUND|ALREADY_EXISTS|PERMISSION_DENIED|UNAUTHENTICATED|"
    "FAILED_PRECONDITION|OUT_OF_RANGE|CANCELLED"
)
# p99 budgets (seconds): the gateway's default deadline (GatewaySettings.default_deadline_s) and
# each stage's share of it (GatewaySettings.<stage>_share); a test keeps them equal.
END_TO_END_BUDGET_S = 0.25
STAGE_BUDGET_S = {"recall": 0.075, "prerank": 0.0375, "rank": 0.1, "rerank": 0.0375}
ERROR_RATIO_MAX = 0.01
DEGRADED_RATIO_MAX = 0.05

Rule = dict[str, Any]


def quantile_rules(level: str, metric: str, by: str, select: str = "") -> list[Rule]:
    """p50/p95/p99 of a histogram over WINDOW, kept per `by` labels."""
    selector = f"{{{select}}}" if select else ""
    return [
        {
            "record": f"{level}:{metric}:{name}_{WINDOW}",
            "expr": f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{selector}[{WINDOW}])))",
        }
        for name, q in QUANTILES.items()
    ]


def recording_groups() -> list[dict]:
    requests = f"stage_rpc:cascade_rpc_requests:rate{WINDOW}"
    by_code = f"stage_rpc_code:cascade_rpc_requests:rate{WINDOW}"
    errors = f'sum by (stage, rpc) ({by_code}{{code!~"{CALLER_CODES}"}})'
    kept = f"rate(cascade_recall_channel_kept_total[{WINDOW}])"
    answers = f"rate(cascade_gateway_answers_total[{WINDOW}])"
    degraded_answers = f"rate(cascade_gateway_degraded_answers_total[{WINDOW}])"
    latency = [
        *quantile_rules("stage_rpc", "cascade_rpc_latency_seconds", "stage, rpc", SERVICE_RPCS),
        *quantile_rules("stage", "cascade_gateway_stage_latency_seconds", "stage"),
        *quantile_rules("stage", "cascade_model_latency_seconds", "stage"),
        *quantile_rules("channel", "cascade_recall_channel_latency_seconds", "channel"),
    ]
    traffic = [
        {
            "record": by_code,
            "expr": f"sum by (stage, rpc, code) "
            f"(rate(cascade_rpc_requests_total{{{SERVICE_RPCS}}}[{WINDOW}]))",
        },
        {"record": requests, "expr": f"sum without (code) ({by_code})"},
        {
            # `or ... * 0`: a service without errors reads 0, not "no data".
            "record": f"stage_rpc:cascade_rpc_errors:ratio_rate{WINDOW}",
            "expr": f"({errors} or {requests} * 0) / {requests}",
        },
    ]
    cascade = [
        {
            "record": f"stage_reason:cascade_gateway_degraded:rate{WINDOW}",
            "expr": f"sum by (stage, reason) (rate(cascade_gateway_degraded_total[{WINDOW}]))",
        },
        {
            "record": f"job:cascade_gateway_answers:rate{WINDOW}",
            "expr": f"sum by (job) ({answers})",
        },
        {
            "record": f"job:cascade_gateway_degraded_answers:ratio_rate{WINDOW}",
            "expr": f"sum by (job) ({degraded_answers}) / sum by (job) ({answers})",
        },
        {
            # Candidates per model call: the funnel's width at each stage, in and out.
            "record": f"stage_direction:cascade_candidates:per_call_{WINDOW}",
            "expr": f"sum by (stage, direction) (rate(cascade_candidates_total[{WINDOW}])) "
            f"/ on (stage) group_left "
            f"sum by (stage) (rate(cascade_model_latency_seconds_count[{WINDOW}]))",
        },
        {
            "record": f"channel:cascade_recall_channel_kept:ratio_rate{WINDOW}",
            "expr": f"sum by (channel) ({kept}) / ignoring (channel) group_left sum ({kept})",
        },
    ]
    return [
        {"name": "cascade-latency", "rules": latency},
        {"name": "cascade-traffic", "rules": traffic},
        {"name": "cascade-funnel", "rules": cascade},
    ]


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, **labels) -> Rule:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary},
    }


def alert_groups() -> list[dict]:
    p99 = f"stage:cascade_gateway_stage_latency_seconds:p99_{WINDOW}"
    end_to_end = f"stage_rpc:cascade_rpc_latency_seconds:p99_{WINDOW}"
    alerts = [
        _alert(
            "CascadeStageDown",
            f'up{{job="{JOB}"}} == 0',
            "30s",
            "page",
            "{{ $labels.stage }} ({{ $labels.instance }}) has not answered a scrape for 30 s.",
        ),
        _alert(
            "CascadeLatencyOverBudget",
            f'{end_to_end}{{stage="gateway", rpc="{MAIN_RPC["gateway"]}"}} > {END_TO_END_BUDGET_S}',
            "5m",
            "page",
            "Recommend p99 is {{ $value | humanizeDuration }}, over the "
            f"{END_TO_END_BUDGET_S * 1000:g} ms deadline.",
            stage="gateway",
        ),
    ]
    for stage in STAGES:
        budget = STAGE_BUDGET_S[stage]
        alerts.append(
            _alert(
                "CascadeStageLatencyOverBudget",
                f'{p99}{{stage="{stage}"}} > {budget}',
                "5m",
                "ticket",
                f"{stage} p99 as the gateway sees it is {{{{ $value | humanizeDuration }}}}, "
                f"over its {budget * 1000:g} ms share of the deadline.",
                stage=stage,
            )
        )
    alerts += [
        _alert(
            "CascadeErrorRatioHigh",
            f"stage_rpc:cascade_rpc_errors:ratio_rate{WINDOW} > {ERROR_RATIO_MAX}",
            "5m",
            "page",
            "{{ $labels.stage }} {{ $labels.rpc }}: {{ $value | humanizePercentage }} of calls "
            "end in a server error.",
        ),
        _alert(
            "CascadeDegradedRatioHigh",
            f"job:cascade_gateway_degraded_answers:ratio_rate{WINDOW} > {DEGRADED_RATIO_MAX}",
            "5m",
            "ticket",
            "{{ $value | humanizePercentage }} of Recommend answers are degraded (a stage "
            "replaced by its fallback); see cascade_gateway_degraded by stage and reason.",
        ),
    ]
    return [{"name": "cascade-alerts", "rules": alerts}]


def recorded_names() -> list[str]:
    return [r["record"] for g in recording_groups() for r in g["rules"]]


def all_expressions() -> list[tuple[str, str]]:
    """(rule name, expr) of every recording and alert rule."""
    groups = [*recording_groups(), *alert_groups()]
    return [(r.get("record") or r["alert"], r["expr"]) for g in groups for r in g["rules"]]


HEADER = "# Generated by `python -m deploy.generate` from deploy/prometheus_rules.py: edit there.\n"


def render(groups: list[dict]) -> str:
    body = yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER + body


def files() -> dict[str, str]:
    """Path (from the repository root) -> text of every rules file."""
    return {
        "deploy/prometheus/rules/cascade-recording.yml": render(recording_groups()),
        "deploy/prometheus/rules/cascade-alerts.yml": render(alert_groups()),
    }
