"""Each page's content as plain data for its template; every source failure becomes a message
(SourceError) on the page, never a trace."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from app.console import charts, metrics, sources
from app.console.explain import Explained, explain
from app.console.metrics import History
from app.console.settings import ConsoleSettings
from app.console.sources import Catalog, SourceError

MAX_USER_CHARS = 128  # an external user key longer than this is refused before any call
HISTORY_SHOWN = 20
# Rerank's defaults, which the explain page reads its filters and rules against: the creator cap
# per page (services/rerank/rules.py) and how long a shown page stays filtered
# (cascade/online_state.py StoreLimits.shown_ttl_s).
MAX_PER_CREATOR = 2
SHOWN_TTL_S = 3600.0
NEIGHBOURS_SHOWN = 10
SIM_METRICS = (
    ("expected_engagement", "true engagement (expected)"),
    ("realised_engagement", "engagement (realised)"),
    ("coverage", "catalogue coverage"),
    ("fresh_share", "impressions on new uploads"),
    ("creator_gini", "creator Gini"),
)


def parse_user(text: str) -> str:
    """A user as typed: digits (a dense id) or an external key; SourceError naming the field."""
    user = text.strip()
    if not user:
        raise SourceError("user: enter a user id (digits) or key")
    if len(user) > MAX_USER_CHARS or not user.isprintable():
        raise SourceError(f"user: at most {MAX_USER_CHARS} printable characters")
    return user


def parse_item(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0 or len(text) > 18:
        raise SourceError(f"item: {text[:40]!r} is not an item id (a positive integer)")
    return int(text)


def explain_page(
    settings: ConsoleSettings, catalog: Catalog, user_text: str, count: int, at_text: str = ""
) -> dict:
    user = parse_user(user_text)
    at_text = at_text.strip()
    if at_text and (not at_text.isdigit() or len(at_text) > 13):
        raise SourceError(f"at: {at_text[:20]!r} is not a Unix time in milliseconds")
    response = sources.explain(
        sources.gateway_address(settings),
        settings.explain_token.reveal(),
        user,
        count,
        settings.timeout_s,
        settings.gateway_tls_ca,
        int(at_text or 0),
    )
    dense = response.explanation.user_id
    if dense == 0:
        raise SourceError(
            f"user {user!r} is unknown to the gateway: it would be served as anonymous"
        )
    shown = sources.recently_shown(settings.event_log_uri, dense, SHOWN_TTL_S)
    explained: Explained = explain(response, catalog.creator, MAX_PER_CREATOR, shown)
    online = sources.online_plays(settings.event_log_uri, explained.user_id, HISTORY_SHOWN)
    logged = catalog.history(explained.user_id, HISTORY_SHOWN)
    history = [(i, t // 1000, f"{e} (online)") for i, t, e in online]
    history += [(i, t, "play (logged)") for i, t in logged]
    return {
        "user": user,
        "explained": explained,
        "items": list(response.items.item_ids),
        "request_arm": response.arm,
        "history": history[:HISTORY_SHOWN],
    }


def item_page(settings: ConsoleSettings, catalog: Catalog, item_text: str) -> dict:
    item_id = parse_item(item_text)
    uploaded_record = (
        None if catalog.known(item_id) else sources.upload(settings.event_log_uri, item_id)
    )
    if not catalog.known(item_id) and uploaded_record is None:
        raise SourceError(
            f"item: {item_id} is not in the catalogue of the served bundle nor uploaded"
        )
    counts, impressions = sources.event_log_counts(settings.event_log_uri, item_id)
    if uploaded_record is None:
        title, creator, uploaded = (
            catalog.title(item_id),
            catalog.creator(item_id),
            catalog.uploaded(item_id),
        )
    else:
        title = f"upload {uploaded_record['item_key']}"
        creator, uploaded = (
            int(uploaded_record["creator_id"]),
            int(uploaded_record["upload_ms"]) // 1000,
        )
    pool, pool_note = pool_status(settings, uploaded, counts.get("impression", 0))
    return {
        "item_id": item_id,
        "title": title,
        "creator": creator,
        "uploaded": uploaded,
        "age": sources.age(uploaded, catalog.clock_s),
        "counters": counts,
        "impressions": impressions,
        "pool": pool,
        "pool_note": pool_note,
        "item_cf": catalog.item_cf(item_id, NEIGHBOURS_SHOWN),
        "two_tower": catalog.two_tower(item_id, NEIGHBOURS_SHOWN),
    }


def pool_status(
    settings: ConsoleSettings, uploaded_s: int, delivered: int
) -> tuple[dict | None, str]:
    """For an upload younger than the traffic pool's window on the gateway's clock: the
    impressions delivered (the Feedback's impression events, as the pool counts them) against
    the served target K, their share, the time left in the window and whether the target is
    reached; else None, with a note saying why there is none."""
    try:
        gateways = [e for e in sources.endpoints(settings) if e.name == "gateway"]
        if not gateways:
            return None, "the stack has no gateway: the traffic pool cannot be read"
        served = sources.pool_served(gateways[0].metrics_url, settings.timeout_s)
    except SourceError as error:
        return None, str(error)
    if not served.slots:
        return None, "the gateway serves without the traffic pool"
    if not served.clock_s:
        return None, "the gateway has served no request yet: its pool has no clock"
    age_s = served.clock_s - uploaded_s
    if not 0 <= age_s < served.window_s:
        return None, ""  # an older item: impressions so far, as for any item
    return {
        "delivered": delivered,
        "target": served.target,
        "share": delivered / served.target,
        "left": sources.age(0, served.window_s - age_s),
        "left_s": served.window_s - age_s,
        "state": "target reached" if delivered >= served.target else "in the pool",
    }, ""


@dataclass
class ServiceRow:
    name: str
    replicas: int
    health: list[str]
    version: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    rate: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)  # non-OK answers by code
    sparkline: object = ""
    problem: str = ""


def stack_page(settings: ConsoleSettings, history: History) -> dict:
    endpoints = sources.endpoints(settings)
    scraped = {e.name: e.metrics_url for e in endpoints if e.metrics_url}
    history.record(scraped)  # the window ends now
    rows: dict[str, ServiceRow] = {}
    for endpoint in endpoints:
        row = rows.setdefault(endpoint.name, ServiceRow(endpoint.name, 0, []))
        row.replicas += 1
        row.health.append(sources.health(endpoint.address, settings.timeout_s))
    degraded: dict[str, float] = {}
    refused: dict[str, float] = {}
    for row in rows.values():
        if row.name not in scraped:
            row.problem = "no metrics endpoint given: see Prometheus below"
            continue
        kept = history.scrapes(row.name)
        problem = history.error(row.name)
        if problem or not kept:
            row.problem = problem or "no metrics scraped yet"
            continue
        new, old = kept[-1], kept[0] if len(kept) > 1 else None
        figures = metrics.latency(new, old, row.name)
        row.p50_ms, row.p99_ms, row.rate = figures.p50_ms, figures.p99_ms, figures.rate
        row.version = ", ".join(
            sorted(
                {
                    labels.get("model_version", "")
                    for labels, v in new.select("cascade_model_info")
                    if v
                }
            )
        )
        for labels, value in new.select("cascade_rpc_requests_total", rpc=metrics.RPCS[row.name]):
            before = (
                0.0
                if old is None
                else old.samples.get(
                    ("cascade_rpc_requests_total", tuple(sorted(labels.items()))), 0.0
                )
            )
            if labels.get("code") != "OK" and value - before > 0:
                row.errors[labels["code"]] = row.errors.get(labels["code"], 0) + value - before
        row.sparkline = charts.sparkline(history.series(row.name))
        if row.name == "gateway":
            for labels, value in new.select("cascade_gateway_degraded_total"):
                key = f"{labels['stage']} {labels['reason']}"
                degraded[key] = degraded.get(key, 0) + value
            for labels, value in new.select("cascade_gateway_refused_total"):
                refused[labels["reason"]] = refused.get(labels["reason"], 0) + value
    prometheus, prometheus_error = [], ""
    if settings.prometheus_url:
        try:
            prometheus = prometheus_latency(settings)
        except SourceError as error:
            prometheus_error = str(error)
    return {
        "rows": list(rows.values()),
        "degraded": degraded,
        "refused": refused,
        "window_s": settings.window_s,
        "prometheus": prometheus,
        "prometheus_error": prometheus_error,
    }


def prometheus_latency(settings: ConsoleSettings) -> list[dict]:
    """p50/p99 (ms) and rate per stage over the window from Prometheus' own queries."""
    window = f"{int(settings.window_s)}s"
    by_stage: dict[str, dict] = {}
    for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        query = (
            f"histogram_quantile({q}, sum by (stage, le) "
            f'(rate(cascade_rpc_latency_seconds_bucket{{traffic="live"}}[{window}])))'
        )
        for result in sources.prometheus_query(settings.prometheus_url, query, settings.timeout_s):
            value = float(result["value"][1])
            stage = result["metric"].get("stage", "?")
            by_stage.setdefault(stage, {"stage": stage})[key] = (
                None if math.isnan(value) else value * 1000
            )
    query = f'sum by (stage) (rate(cascade_rpc_requests_total{{traffic="live"}}[{window}]))'
    for result in sources.prometheus_query(settings.prometheus_url, query, settings.timeout_s):
        stage = result["metric"].get("stage", "?")
        by_stage.setdefault(stage, {"stage": stage})["rate"] = float(result["value"][1])
    return sorted(by_stage.values(), key=lambda r: r["stage"])


def experiments_page(settings: ConsoleSettings, history: History) -> dict:
    """Arms from the gateway's metrics, and the simulation report as charts (each part fails
    on its own: a stack that is down still shows the report)."""
    arms, arms_error = [], ""
    try:
        gateways = [e for e in sources.endpoints(settings) if e.name == "gateway"]
        history.record({e.name: e.metrics_url for e in gateways if e.metrics_url})
        kept = history.scrapes("gateway")
        if history.error("gateway") or not kept:
            raise SourceError(history.error("gateway") or "the gateway's metrics are not scraped")
        new, old = kept[-1], kept[0] if len(kept) > 1 else None
        for labels, answers in sorted(
            new.select("cascade_gateway_arm_answers_total"), key=lambda pair: pair[0]["arm"]
        ):
            arm = labels["arm"]
            figures = metrics.latency(
                new, old, "gateway", "cascade_gateway_arm_latency_seconds", arm=arm
            )
            arms.append(
                {"arm": arm, "answers": answers, "p50_ms": figures.p50_ms, "p99_ms": figures.p99_ms}
            )
    except SourceError as error:
        arms_error = str(error)
    report, report_error, chart_list = {}, "", []
    try:
        report = sources.simulation_report(Path(settings.simulation_dir))
        rows = report.get("rows", [])
        names = sorted({row["arm"] for row in rows})
        for key, title in SIM_METRICS:
            series = [
                charts.Series(
                    arm,
                    [
                        (row["day"], row[key])
                        for row in rows
                        if row["arm"] == arm and row.get(key) is not None
                    ],
                )
                for arm in names
            ]
            if any(s.points for s in series):
                chart_list.append(charts.line_chart(title, series, "simulated day"))
    except (SourceError, KeyError, TypeError) as error:
        report_error = (
            str(error)
            if isinstance(error, SourceError)
            else (
                f"{settings.simulation_dir}/simulation.json has no rows of arm, day and metrics: "
                f"{error!r}"
            )
        )
    return {
        "arms": arms,
        "arms_error": arms_error,
        "report": report,
        "report_error": report_error,
        "charts": chart_list,
        "simulation_dir": settings.simulation_dir,
    }
