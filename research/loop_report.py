"""The simulated loop's report: per-arm true engagement per day, the cascade against EASE day by
day, the traffic pool for new uploads, as JSON rows turned into Markdown and a plot
(results/loop/simulation.{md,png}, written by `cascade simulate`, app/loop.py)."""

from __future__ import annotations

import json
from pathlib import Path


def headline(rows: list[dict]) -> dict:
    """The full cascade vs EASE after the last day and vs its own first day, on expected
    engagement per impression, and its fraction of the oracle-random gap last day / first day
    (the world's users use up what suits them best, so even the oracle's raw engagement falls
    day by day: "rising" is only measurable against that ceiling). Ratio intervals by the delta
    method from the arms' 95% half-widths (independent sessions)."""
    by = {(r["arm"], r["day"]): r for r in rows}
    days = sorted({r["day"] for r in rows})
    out = {}
    for name, a, b in (
        ("cascade_vs_ease_last_day", ("cascade", days[-1]), ("ease", days[-1])),
        ("cascade_last_vs_first_day", ("cascade", days[-1]), ("cascade", days[0])),
    ):
        if a in by and b in by and a != b:
            out[name] = _ratio(_engagement(by[a]), _engagement(by[b]))
    last_gap, first_gap = (_gap_closed(by, day) for day in (days[-1], days[0]))
    if len(days) > 1 and last_gap is not None and first_gap is not None:
        out["cascade_gap_last_vs_first_day"] = _ratio(last_gap, first_gap)
    return out


def _engagement(row: dict) -> tuple[float, float]:
    return row["expected_engagement"], row["expected_ci95"]


def _ratio(x: tuple[float, float], y: tuple[float, float]) -> dict:
    """x / y for (value, 95% half-width) pairs."""
    ratio = x[0] / y[0]
    relative = ((x[1] / x[0]) ** 2 + (y[1] / y[0]) ** 2) ** 0.5
    return {"ratio": round(ratio, 4), "ci95": round(ratio * relative, 4)}


def _gap_closed(by: dict, day: int) -> tuple[float, float] | None:
    """(the cascade's fraction of the oracle-random gap, its 95% half-width) on one day."""
    if not all((arm, day) in by for arm in ("cascade", "oracle", "random")):
        return None
    (c, dc), (o, do), (r, dr) = (
        _engagement(by[arm, day]) for arm in ("cascade", "oracle", "random")
    )
    gap = (c - r) / (o - r)
    return gap, (dc**2 + (gap * do) ** 2 + ((1 - gap) * dr) ** 2) ** 0.5 / (o - r)


def per_day_vs_ease(rows: list[dict]) -> list[dict]:
    """cascade / EASE on each simulated day (expected engagement, delta-method interval)."""
    by = {(r["arm"], r["day"]): r for r in rows}
    days = sorted({r["day"] for r in rows})
    return [
        {"day": day, **_ratio(_engagement(by["cascade", day]), _engagement(by["ease", day]))}
        for day in days
        if ("cascade", day) in by and ("ease", day) in by
    ]


def to_markdown(report: dict) -> str:
    config = report["config"]
    lines = [
        "# The simulated world against the arms (ground-truth engagement)",
        "",
        f"{config['users']} simulated users of the synthetic world over {config['days']} "
        f"simulated days ({config['sessions_per_day']} sessions per user-day on average), pages "
        f"of 10, arms by salted hash of the user id; world {config.get('world_hash', '-')}; "
        f"uploads per simulated day: {config.get('uploads_per_day') or 'as the world decides'}, "
        f"P(unfollow) {config.get('unfollow_per_day', 0)} per user-day; "
        + profile_words(report.get("profile"))
        + f"{report['seconds']} s.",
        "",
        "Engagement per impression: play + complete + 2 like + 3 share (expected: the truth's "
        "probabilities at the shown position; realised: the events drawn). 95% intervals over "
        "sessions. Gap closed: (arm - random) / (oracle - random) on expected engagement.",
        "",
        "| day | arm | impressions | expected | ± | realised | ± | gap closed | coverage "
        "| creator Gini | fresh (<1 day) |",
        "|---" * 11 + "|",
    ]
    for row in report["rows"]:
        gap = row.get("oracle_gap_closed")
        lines.append(
            f"| {row['day']} | {row['arm']} | {row['impressions']} "
            f"| {row['expected_engagement']:.4f} | {row['expected_ci95']:.4f} "
            f"| {row['realised_engagement']:.4f} | {row['realised_ci95']:.4f} "
            f"| {'-' if gap is None else f'{gap:.3f}'} | {row['coverage']:.4f} "
            f"| {row['creator_gini']:.3f} | {row['fresh_share']:.3f} |"
        )
    names = {
        "cascade_vs_ease_last_day": "cascade / EASE, last day",
        "cascade_last_vs_first_day": "cascade, last day / first day",
        "cascade_gap_last_vs_first_day": "cascade's fraction of the oracle-random gap, "
        "last day / first day",
    }
    if report.get("headline"):
        lines += ["", "| headline (expected engagement) | ratio | ± (95%) |", "|---|---|---|"]
        for key, value in report["headline"].items():
            lines.append(f"| {names[key]} | {value['ratio']:.3f} | {value['ci95']:.3f} |")
    if by_day := per_day_vs_ease(report["rows"]):
        lines += ["", "| day | cascade / EASE | ± (95%) |", "|---|---|---|"]
        lines += [f"| {r['day']} | {r['ratio']:.3f} | {r['ci95']:.3f} |" for r in by_day]
    lines += pool_lines(report)
    if report.get("retraining"):
        lines += [
            "",
            f"Retraining ({config.get('retrain')}): after each day but the last, the event log "
            "folded into a new bundle (training/retrain.py) that every service hot-reloaded before "
            "the next day.",
            "",
            "Publish gate: the served ranker and the fine-tuned one, mean logloss on the latest "
            "served impressions (held out of the fine-tune; observed outcomes only).",
            "",
            "| after day | bundle | served impressions | plays heard | rank logloss before "
            "| after | gate: served | gate: new | ranker | job s | reload s |",
            "|---" * 11 + "|",
        ]
        for job in report["retraining"]:
            rank = job["rank"]
            gate = rank.get("gate", {})
            shipped = "-" if not gate else "fine-tuned" if gate["publish"] else "kept"
            lines.append(
                f"| {job['after_day']} | {job['version']} | {job['served_impressions']} "
                f"| {job['plays_heard']} | {rank['validation_logloss_before']:.4f} "
                f"| {rank['validation_logloss_after']:.4f} "
                f"| {gate.get('served_logloss', '-')} | {gate.get('new_logloss', '-')} "
                f"| {shipped} | {job['seconds']} | {job['reload_seconds']} |"
            )
    return "\n".join(lines) + "\n"


def profile_words(profile: dict | None) -> str:
    """What the cascade arms served, in words: the profile, its hash and each deviating arm."""
    if not profile or not profile.get("name"):
        return ""
    arms = "".join(
        f"; arm {name} deviates from it by {json.dumps(overrides)}"
        for name, overrides in profile.get("arms", {}).items()
    )
    return (
        f"the cascade serves profile {profile['name']} (`cascade up --profile {profile['name']}`, "
        f"{profile['file']}, sha256 {profile['sha256'][:12]}){arms}; "
    )


def pool_lines(report: dict) -> list[str]:
    """The cascade (with the traffic pool) against the no-pool arm, per day: the share of
    impressions in pool slots, fresh shares, the organic slots' fresh and upload shares, and
    expected engagement with the ratio's 95% interval (delta method)."""
    by = {(row["arm"], row["day"]): row for row in report["rows"]}
    days = sorted({row["day"] for row in report["rows"] if row["arm"] == "no-pool"})
    if not days:
        return []
    lines = [
        "",
        "Traffic pool: arm cascade serves the profile's pool (gateway/pool.py, K = "
        f"{report['config'].get('pool_target')}), arm no-pool the same gateway and bundle with "
        "it off. Pool: share of impressions in pool slots; organic: the other slots; uploads: "
        "any track uploaded during the run.",
        "",
        "| day | arm | pool | fresh (<1 day) | organic fresh | organic uploads | expected "
        "| ± | pool slots' expected | cascade / no-pool | ± (95%) |",
        "|---" * 11 + "|",
    ]
    for day in days:
        for arm in ("no-pool", "cascade"):
            row = by.get((arm, day))
            if row is None:
                continue
            ratio = "-", "-"
            base = by.get(("no-pool", day))
            if arm == "cascade" and base is not None:
                value = row["expected_engagement"] / base["expected_engagement"]
                relative = (
                    (row["expected_ci95"] / row["expected_engagement"]) ** 2
                    + (base["expected_ci95"] / base["expected_engagement"]) ** 2
                ) ** 0.5
                ratio = f"{value:.3f}", f"{value * relative:.3f}"
            pooled = row.get("explored_expected")
            lines.append(
                f"| {day} | {arm} | {row.get('explored_share', 0.0):.3f} "
                f"| {row['fresh_share']:.3f} | {row['organic_fresh_share']:.3f} "
                f"| {row.get('organic_upload_share', 0.0):.4f} "
                f"| {row['expected_engagement']:.4f} | {row['expected_ci95']:.4f} "
                f"| {'-' if pooled is None else f'{pooled:.4f}'} | {ratio[0]} | {ratio[1]} |"
            )
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for arm in dict.fromkeys(row["arm"] for row in report["rows"]):
        rows = [row for row in report["rows"] if row["arm"] == arm]
        axis.errorbar(
            [r["day"] + 1 for r in rows],
            [r["expected_engagement"] for r in rows],
            yerr=[r["expected_ci95"] for r in rows],
            label=arm,
            marker="o",
            capsize=3,
        )
    axis.set_xlabel("simulated day")
    axis.set_ylabel("expected engagement per impression")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
