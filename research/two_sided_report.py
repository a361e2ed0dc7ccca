"""The two-sided benchmark's report: Markdown tables per world, day and arm, and one PNG with a
panel per metric (app/two_sided.py writes both beside its JSON).
"""

from __future__ import annotations

from pathlib import Path

# (key, its 95% half-width key or None, column title, format)
METRICS = (
    ("expected_engagement", "expected_ci95", "true engagement / impression", ".4f"),
    ("oracle_gap_closed", "oracle_gap_ci95", "oracle-random gap closed", ".3f"),
    ("fresh_share", "fresh_share_ci95", "impressions on items < 24 h", ".3f"),
    ("reaching_target_24h", "reaching_target_24h_ci95", "uploads reaching K in 24 h", ".3f"),
    ("median_first_play_h", None, "median h to first play", ".1f"),
    ("never_played", None, "uploads never played", "d"),
    ("active_creators", None, "active creators", "d"),
    ("uploads", None, "uploads", "d"),
    ("coverage", None, "catalogue coverage", ".4f"),
    ("creator_gini", None, "creator Gini", ".3f"),
)


def _cell(row: dict, key: str, half: str | None, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = format(value, fmt)
    if half is not None and row.get(half) is not None:
        text += f" ± {format(row[half], fmt)}"
    return text


def to_markdown(report: dict) -> str:
    config, world, target = report["config"], report["world"], report["exposure_target"]
    lines = ["# Two-sided simulation: each policy in a world of its own", ""]
    if report.get("label"):
        lines += [f"**{report['label']}**", ""]
    lines += [
        f"World hash {world['hash']} (neutral twin {world['neutral_hash']}); "
        f"{world['uploads_per_day']} uploads a day at the world's rate. {config['users']} "
        f"simulated users of {world['parameters']['n_users']}, every one in every arm's world "
        f"(design: {config['design']}; same users, same session schedule, same world at the "
        f"start), {config['days']} simulated days, {config['sessions_per_day']} sessions per "
        f"user-day on average, retrain {config['retrain']}. Wall time "
        f"{report['seconds']} s (sum of the runs' days).",
        "",
        f"Exposure target K = {target['K']}: {target['formula']}.",
        "",
    ]
    profile = config.get("profile")
    if profile:  # what the cascade arm serves, exactly (`cascade up --profile NAME`)
        lines += [
            f"The cascade arm serves profile `{profile['name']}` ({profile['file']}, sha256 "
            f"{profile['sha256'][:16]}); the pool target K above is the world's, scaled to the "
            "simulated users.",
            "",
        ]
    lines += [
        "Means carry 95% intervals (engagement and fresh share over sessions, the K share "
        "binomial). Uploads reaching K count only uploads with a full 24 h left in the run (the "
        "others are 'excluded'); time to first play is over uploads played within the run, the "
        "rest counted as never played. Active creators: at the day's start, after its stops and "
        "joins.",
    ]
    names = {
        "cascade_vs_ease_last_day": "cascade / EASE, last day (two-sided world)",
        "neutral_cascade_vs_ease_last_day": "cascade / EASE, last day (neutral world)",
    }
    head = report["headline"]
    lines += ["", "| headline | ratio | ± (95%) |", "|---|---|---|"]
    for key, title in names.items():
        if key in head:
            lines.append(f"| {title} | {head[key]['ratio']:.3f} | {head[key]['ci95']:.3f} |")
    lines += [
        "",
        "| arm | uploads reaching K in 24 h | followers shown an upload in its first hour "
        "| active creators, last day |",
        "|---|---|---|---|",
    ]
    followers = head.get("followers_shown_upload_1h", {})
    for arm, share in head["uploads_reaching_target_24h"].items():
        active = head["active_creators_last_day"][arm]
        seen = followers.get(arm)
        lines.append(
            f"| {arm} | {'-' if share is None else f'{share:.3f}'} "
            f"| {'-' if seen is None else f'{seen:.3f}'} | {active} |"
        )
    lines += cold_start_lines(report)
    if needed := report.get("users_for_ci_0.08"):
        lines += [
            "",
            f"Users per arm for a ±0.08 interval on cascade / EASE on one day: {needed['users']} "
            f"(from ±{needed['measured_ci95']} with {config['users']} users, basis: "
            f"{needed['basis']}; intervals shrink as 1/sqrt(users)).",
        ]
    for name in ("two-sided", "neutral"):
        runs = [r for r in report["runs"] if r["world"] == name]
        if not runs:
            continue
        lines += [
            "",
            f"## {name} world",
            "",
            "| day | arm | " + " | ".join(m[2] for m in METRICS) + " | excluded |",
            "|---" * (len(METRICS) + 3) + "|",
        ]
        for day in range(config["days"]):
            for run in runs:
                row = run["days"][day]
                cells = " | ".join(_cell(row, m[0], m[1], m[3]) for m in METRICS)
                lines.append(f"| {day} | {run['arm']} | {cells} | {row['uploads_excluded']} |")
    lines += ["", "Seconds per simulated day, per run (world/arm):", ""]
    lines += [f"- {key}: {value}" for key, value in report["seconds_per_day"].items()]
    return "\n".join(lines) + "\n"


def cold_start_lines(report: dict) -> list[str]:
    """Per arm (two-sided world): impressions delivered to uploads by upload age against K, and
    followers shown a followed creator's upload within its first hour."""
    runs = [r for r in report["runs"] if r["world"] == "two-sided" and r.get("cold_start")]
    if not runs:
        return []
    ages = [b["age_h"] for b in runs[0]["cold_start"]["by_age"]]
    lines = [
        "",
        "## New uploads in their first day (two-sided world)",
        "",
        f"Over the uploads with a full 24 h left in the run; K = {report['exposure_target']['K']}. "
        "Each cell: mean impressions delivered by that upload age / share of uploads at K by "
        "then. Followers: simulated users following the creator at upload with a session in "
        "the upload's first hour, and the share of them shown it in that hour.",
        "",
        "| arm | uploads | "
        + " | ".join(f"by {h} h" for h in ages)
        + " | followers active in hour 1 | shown it in hour 1 |",
        "|---" * (len(ages) + 4) + "|",
    ]
    for run in runs:
        cold = run["cold_start"]
        cells = " | ".join(
            "-"
            if b["mean_impressions"] is None
            else f"{b['mean_impressions']:.2f} / {_cell(b, 'reaching_target', None, '.2f')}"
            for b in cold["by_age"]
        )
        share = cold["followers_shown_1h_share"]
        lines.append(
            f"| {run['arm']} | {cold['uploads']} | {cells} | {cold['followers_with_session_1h']} "
            f"| {'-' if share is None else f'{share:.3f}'} |"
        )
    return lines


def plot(report: dict, path: Path) -> None:
    """One panel per metric, a line per arm over the days (the two-sided world; the neutral
    world's runs dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = 5
    rows = -(-len(METRICS) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows))
    colours: dict[str, str] = {}
    for axis, (key, half, title, _) in zip(axes.ravel(), METRICS, strict=False):
        for run in report["runs"]:
            days = [d for d in run["days"] if d.get(key) is not None]
            if not days:
                continue
            colour = colours.setdefault(run["arm"], f"C{len(colours)}")
            axis.errorbar(
                [d["day"] + 1 for d in days],
                [d[key] for d in days],
                yerr=[d.get(half) or 0.0 for d in days] if half else None,
                color=colour,
                linestyle="--" if run["world"] == "neutral" else "-",
                marker="o",
                capsize=3,
                label=f"{run['arm']}{' (neutral)' if run['world'] == 'neutral' else ''}",
            )
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("simulated day")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in axes.ravel()[len(METRICS) :]:
        axis.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)
