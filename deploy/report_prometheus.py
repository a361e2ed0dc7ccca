"""Writes the Prometheus check's report: JSON (everything) and Markdown (the tables), and prints
the Markdown so the run's output is the report."""

from __future__ import annotations

import json
from pathlib import Path


def _value(query: dict) -> str:
    sample = query.get("sample")
    if not sample:
        return "-"
    shown = sorted((k, v) for k, v in sample["labels"].items() if k not in ("job", "instance"))
    labels = ", ".join(f"{k}={v}" for k, v in shown)
    return f"{sample['value']:.4g}" + (f" ({labels})" if labels else "")


def markdown(report: dict) -> str:
    stack, prometheus, traffic = report["stack"], report["prometheus"], report["traffic"]
    lines = [
        f"# Prometheus check: {'PASS' if report['ok'] else 'FAIL'}",
        "",
        f"{report['prometheus_version']}; scraping a {'fresh' if stack['own'] else 'running'} "
        f"{stack['dataset']} stack (bundle {stack['bundle']}) every "
        f"{prometheus['scrape_interval_s']} s from {prometheus['address']}.",
        "",
        "## promtool",
        "",
    ]
    for check in report["promtool"]:
        fence = ["```", check["output"], "```", ""]
        lines += [f"`{check['command']}` (exit {check['rc']})", "", *fence]
    down = sorted({r["metric"].get("stage", "?") for r in report.get("down_seen", [])})
    lines += [
        "## Traffic",
        "",
        f"{traffic['seconds']} s; Recommend outcomes {traffic['recommend']}; Feedback events "
        f"{traffic['feedback_events']}; paused {traffic['paused'] or 'nothing'}.",
        "",
        f"Stages seen down (`up == 0`) during the run: {', '.join(down) or 'none'}.",
        "",
    ]
    with_data = sum(q["ok"] for q in report["queries"])
    lines += [
        "## Queries",
        "",
        f"{with_data} of {len(report['queries'])} return data.",
        "",
        "| source | rule / panel | series | first sample | data |",
        "|---|---|---|---|---|",
    ]
    for q in report["queries"]:
        name, ok = q["name"].replace("|", "\\|"), "yes" if q["ok"] else "**NO**"
        lines.append(f"| {q['source']} | {name} | {q.get('series', 0)} | {_value(q)} | {ok} |")
    healthy = sum(r["health"] == "ok" for r in report["rules"])
    lines += [
        "",
        "## Rule evaluation",
        "",
        f"{healthy} of {len(report['rules'])} rules evaluate without error.",
        "",
        "| group | rule | type | health | state |",
        "|---|---|---|---|---|",
    ]
    for r in report["rules"]:
        health = r["health"] + (f" ({r['last_error']})" if r["last_error"] else "")
        lines.append(f"| {r['group']} | {r['name']} | {r['type']} | {health} | {r['state']} |")
    if report["empty"] or report["failing_rules"]:
        lines += ["", f"Empty: {report['empty']}; failing rules: {report['failing_rules']}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "prometheus_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "prometheus_check.md").write_text(text)
    print(text, flush=True)
