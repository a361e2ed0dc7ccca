"""Cascade's Grafana dashboards as plain dicts: overview, per-stage latency and funnel, models.

Panels read the recording rules of deploy/prometheus_rules.py (one place computes a p99), with the
literal rate window, no template variables, so every panel's query can be run as it is against
Prometheus: `python -m deploy.check_prometheus` does exactly that. `python -m deploy.generate`
writes the JSON under deploy/grafana/dashboards/; a test keeps the committed files equal.
"""

from __future__ import annotations

import json
from typing import Any

from deploy.prometheus_rules import JOB, MAIN_RPC, QUANTILES, SERVICE_RPCS, STAGES, WINDOW

DATASOURCE = {"type": "prometheus", "uid": "cascade-prometheus"}  # provisioning/datasources
GRID_WIDTH = 24  # Grafana's grid
Panel = dict[str, Any]


def target(expr: str, legend: str = "", instant: bool = False) -> dict:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant,
        "range": not instant,
        "format": "table" if instant else "time_series",
    }


def panel(
    title: str,
    targets: list[dict],
    unit: str = "short",
    kind: str = "timeseries",
    description: str = "",
    stacked: bool = False,
) -> Panel:
    for ref, t in zip("ABCDEFGH", targets, strict=False):
        t["refId"] = ref
    custom = {"stacking": {"mode": "normal" if stacked else "none"}, "fillOpacity": 20 * stacked}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, **({"custom": custom} if kind == "timeseries" else {})},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if kind == "timeseries"
        else {},
    }


def quantiles(record: str, selector: str, legend_prefix: str = "") -> list[dict]:
    """p50/p95/p99 targets of a recorded histogram."""
    return [
        target(f"{record.format(q=name)}{{{selector}}}", f"{legend_prefix}{name}")
        for name in QUANTILES
    ]


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list[Panel]]]):
    """A dashboard whose rows lay their panels out side by side, each row 8 units high."""
    panels, y, next_id = [], 0, 1
    for row_title, row in rows:
        grid = {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "id": next_id,
                "collapsed": False,
                "gridPos": grid,
                "panels": [],
            }
        )
        next_id, y = next_id + 1, y + 1
        width = GRID_WIDTH // len(row)
        for i, p in enumerate(row):
            p["id"], next_id = next_id, next_id + 1
            p["gridPos"] = {"h": 8, "w": width, "x": i * width, "y": y}
            panels.append(p)
        y += 8
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["cascade"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": panels,
    }


RPC_P = "stage_rpc:cascade_rpc_latency_seconds:{q}_" + WINDOW
GATEWAY_P = "stage:cascade_gateway_stage_latency_seconds:{q}_" + WINDOW
MODEL_P = "stage:cascade_model_latency_seconds:{q}_" + WINDOW
REQUESTS = f"stage_rpc:cascade_rpc_requests:rate{WINDOW}"
BY_CODE = f"stage_rpc_code:cascade_rpc_requests:rate{WINDOW}"
RECOMMEND = f'stage="gateway", rpc="{MAIN_RPC["gateway"]}"'
STAGE_RPCS = "|".join(MAIN_RPC[s] for s in STAGES).replace(".", "\\\\.")


def overview() -> dict:
    traffic = [
        panel(
            "Requests per second",
            [target(f'sum by (rpc) ({REQUESTS}{{stage="gateway"}})', "{{rpc}}")],
            "reqps",
        ),
        panel(
            "Recommend latency, end to end",
            quantiles(RPC_P, RECOMMEND),
            "s",
            description="Server-side time of the gateway's Recommend, all four stages in.",
        ),
    ]
    health = [
        panel(
            "Non-OK answers per second by code",
            [target(f'sum by (stage, code) ({BY_CODE}{{code!="OK"}})', "{{stage}} {{code}}")],
            "reqps",
            description="INVALID_ARGUMENT and other caller errors included.",
        ),
        panel(
            "Server error ratio",
            [
                target(
                    f"max by (stage) (stage_rpc:cascade_rpc_errors:ratio_rate{WINDOW})", "{{stage}}"
                )
            ],
            "percentunit",
            description="Worst RPC of each service; caller errors excluded.",
        ),
        panel(
            "Degraded share of answers",
            [target(f"job:cascade_gateway_degraded_answers:ratio_rate{WINDOW}", "degraded")],
            "percentunit",
            description="Answers where a stage was replaced by its fallback.",
        ),
        panel(
            "Fallbacks per second by stage and reason",
            [target(f"stage_reason:cascade_gateway_degraded:rate{WINDOW}", "{{stage}} {{reason}}")],
            "ops",
            stacked=True,
        ),
    ]
    services = [
        panel("Services up", [target(f'up{{job="{JOB}"}}', "{{stage}}")], "none", "stat"),
        panel(
            "Calls in flight",
            [target(f"sum by (stage) (cascade_rpc_in_flight{{{SERVICE_RPCS}}})", "{{stage}}")],
        ),
        panel(
            "CPU per service (cores)",
            [
                target(
                    f'sum by (stage) (rate(process_cpu_seconds_total{{job="{JOB}"}}[{WINDOW}]))',
                    "{{stage}}",
                )
            ],
        ),
    ]
    return dashboard(
        "cascade-overview",
        "Cascade / Overview",
        "QPS, end-to-end latency, errors and degraded answers of the whole cascade.",
        [("Traffic", traffic), ("Errors and degradation", health), ("Services", services)],
    )


def stages() -> dict:
    seen = [
        panel(f"{s} call, seen by the gateway", quantiles(GATEWAY_P, f'stage="{s}"'), "s")
        for s in STAGES
    ]
    served = [
        panel(f"{s} inside its server", quantiles(RPC_P, f'stage="{s}", rpc="{MAIN_RPC[s]}"'), "s")
        for s in STAGES
    ]
    funnel = [
        panel(
            "Candidates per call, in and out",
            [
                target(
                    f"stage_direction:cascade_candidates:per_call_{WINDOW}",
                    "{{stage}} {{direction}}",
                )
            ],
            description="The funnel: recall ~2000 out, prerank ~500, rank ~100, rerank the page.",
        ),
        panel(
            "Calls per second by stage",
            [target(f'sum by (stage) ({REQUESTS}{{rpc=~"{STAGE_RPCS}"}})', "{{stage}}")],
            "reqps",
        ),
    ]
    channels = [
        panel(
            "Recall channel mix (share of merged candidates)",
            [target(f"channel:cascade_recall_channel_kept:ratio_rate{WINDOW}", "{{channel}}")],
            "percentunit",
            stacked=True,
        ),
        panel(
            "Recall channel latency p99",
            [target(f"channel:cascade_recall_channel_latency_seconds:p99_{WINDOW}", "{{channel}}")],
            "s",
        ),
        panel(
            "Candidates returned per second by channel",
            [
                target(
                    f"sum by (channel) (rate(cascade_recall_channel_candidates_total[{WINDOW}]))",
                    "{{channel}}",
                )
            ],
            "ops",
        ),
    ]
    return dashboard(
        "cascade-stages",
        "Cascade / Stages",
        "Per-stage latency side by side, the funnel sizes, recall's channel mix and the health "
        "of every replica.",
        [
            ("Latency as the gateway sees it (network and queueing included)", seen),
            ("Latency inside each stage (its own RPC)", served),
            ("Funnel", funnel),
            ("Recall channels", channels),
            ("Replicas (one series per scraped instance)", replicas()),
        ],
    )


PER_REPLICA = f'rpc=~"{STAGE_RPCS}|{MAIN_RPC["gateway"].replace(".", "[.]")}"'


def replicas() -> list[Panel]:
    """Per-replica health: a replica that is down, idle while its peers work, slower than
    them or refusing calls stands out beside the others of its stage."""
    legend = "{{stage}} {{instance}}"
    return [
        panel(
            "Replica up (1) or missing a scrape (0)",
            [target(f'up{{job="{JOB}"}}', legend)],
            description="Prometheus' own `up`: 0 when a replica did not answer its last scrape.",
        ),
        panel(
            "Calls per second per replica",
            [
                target(
                    f"sum by (stage, instance) "
                    f"(rate(cascade_rpc_requests_total{{{PER_REPLICA}}}[{WINDOW}]))",
                    legend,
                )
            ],
            "reqps",
            description="A replica the balancer skips serves far fewer calls than its peers.",
        ),
        panel(
            "p99 per replica (own RPC)",
            [
                target(
                    "histogram_quantile(0.99, sum by (stage, instance, le) "
                    f"(rate(cascade_rpc_latency_seconds_bucket{{{PER_REPLICA}}}[{WINDOW}])))",
                    legend,
                )
            ],
            "s",
        ),
        panel(
            "Calls in flight per replica",
            [target(f'sum by (stage, instance) (cascade_rpc_in_flight{{job="{JOB}"}})', legend)],
            description="A replica whose in-flight calls climb while its peers' do not is stuck.",
        ),
    ]


def models() -> dict:
    inference = [panel(f"{s} model time", quantiles(MODEL_P, f'stage="{s}"'), "s") for s in STAGES]
    versions = [
        panel(
            "Model version serving",
            [target("cascade_model_info", "{{stage}} {{model_version}}", instant=True)],
            kind="table",
        ),
        panel(
            "Versions per service (2 during a swap)",
            [target("count by (stage) (cascade_model_info)", "{{stage}}")],
            "none",
            "stat",
        ),
        panel(
            "Pre-rank student's teacher differs from rank's model",
            [target("max(cascade_prerank_teacher_version_mismatch)", "mismatch")],
            "none",
            "stat",
        ),
    ]
    quality = [
        panel(
            "Unknown items per second by stage",
            [target(f"sum by (stage) (rate(cascade_unknown_items_total[{WINDOW}]))", "{{stage}}")],
            "ops",
            description="Candidates a stage's tables did not know: a catalog out of step.",
        ),
        panel(
            "Rerank drops per second by business rule",
            [target(f"sum by (rule) (rate(cascade_rerank_filtered_total[{WINDOW}]))", "{{rule}}")],
            "ops",
        ),
    ]
    uploads = [
        panel(
            "Traffic pool: impressions delivered vs target",
            [target("sum by (kind) (cascade_gateway_pool_impressions)", "{{kind}}")],
            description="Uploads inside the pool's window (gateway/pool.py): impressions "
            "delivered so far (each capped at its target) against the sum of their targets.",
        ),
        panel(
            "Traffic pool: uploads by state",
            [target("sum by (state) (cascade_gateway_pool_uploads)", "{{state}}")],
            description="boosting, extended (engaging well), stopped_early (engaging poorly), "
            "done (target reached).",
            stacked=True,
        ),
        panel(
            "Traffic pool: slots per second by arm",
            [target(f"sum by (arm) (rate(cascade_gateway_pool_slots_total[{WINDOW}]))", "{{arm}}")],
            "ops",
        ),
    ]
    return dashboard(
        "cascade-models",
        "Cascade / Models",
        "Model time per stage (recall: channels and merge; rerank: page selection), versions, "
        "and the traffic pool for new uploads.",
        [
            ("Model time", inference),
            ("Versions", versions),
            ("Inputs", quality),
            ("New uploads", uploads),
        ],
    )


def all_dashboards() -> dict[str, dict]:
    """File name -> dashboard."""
    return {"overview.json": overview(), "stages.json": stages(), "models.json": models()}


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of a dashboard (generated or loaded from JSON); the
    title names the series' legend when a panel has several queries."""
    found = []
    for p in board["panels"]:
        targets = p.get("targets", []) if p["type"] != "row" else []
        for t in targets:
            title = f"{p['title']} ({t['legendFormat']})" if len(targets) > 1 else p["title"]
            found.append((title, t["expr"]))
    return found


def files() -> dict[str, str]:
    """Path (from the repository root) -> text of every dashboard file."""
    return {
        f"deploy/grafana/dashboards/{name}": json.dumps(board, indent=2) + "\n"
        for name, board in all_dashboards().items()
    }
