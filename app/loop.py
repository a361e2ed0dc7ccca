"""`cascade simulate`: the synthetic world's users against the running cascade and the reference
arms, judged on the world's truth; writes results/loop/simulation.{json,md,png}.

Starts its own local stack on a copy of the synthetic bundle (trained into ARTIFACTS when
missing), on the simulated clock (gateway clock "caller"), unless `--gateway` names a running one.
With `--retrain daily` (the default) a job folds each simulated day's event log into the training
data after the day (app/retrain.py), publishes a new bundle into RUN_DIR/artifacts and waits until
every service hot-reloaded it before the next day starts. `make bench-loop` runs it at the size
stated in the Makefile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from app import stack
from app.evaluation_e2e import setting_overrides
from app.retrain import Base, RetrainConfig, retrain
from app.simulate import (
    REFERENCE_ARMS,
    GatewayPolicy,
    SimulationConfig,
    World,
    reference_policy,
    simulate,
    summarise,
)
from cascade.artifacts import Bundle, publish
from cascade.data import load_dataset
from cascade.eventlog_increment import read_log_since
from gateway.arms import Arm
from gateway.client import CascadeClient
from services.recall.tables import CF_MODELS, TableSettings

DATASET = "synthetic"
# Arms the running gateway serves: the cascade as configured, and `explore` (the cascade with
# exploration slots for recent uploads, gateway/explore.py) beside it on the same stack.
GATEWAY_ARMS = ("cascade", "explore")


def run(args: argparse.Namespace) -> dict:
    dataset = load_dataset(DATASET, args.data_dir)
    arms = tuple(Arm(name) for name in args.arms)
    config = SimulationConfig(
        days=args.days,
        users=args.users,
        sessions_per_day=args.sessions_per_day,
        arms=arms,
        seed=args.seed,
        uploads_per_day=args.uploads_per_day,
        unfollow_per_day=args.unfollow_per_day,
    )
    world = World(dataset)
    policies = {
        name: reference_policy(name, dataset, world, args.seed)
        for name in args.arms
        if name in REFERENCE_ARMS
    }
    started = time.perf_counter()
    retraining: list[dict] = []
    served = [name for name in args.arms if name in GATEWAY_ARMS]
    if served and args.gateway is None:
        artifacts = serving_copy(args.artifacts, args.data_dir, args.run_dir, args.item_cf)
        shutil.rmtree(args.run_dir / "eventlog", ignore_errors=True)  # this run's log only
        with stack.running_stack(
            args.run_dir,
            artifacts=artifacts,
            data_dir=args.data_dir,
            dataset=DATASET,
            extra_env={
                "CASCADE_GATEWAY_CLOCK": "caller",
                **args.settings,
                **gateway_arms(args, config),
            },
        ) as running:
            daily = None
            if args.retrain == "daily":
                daily = DailyRetrain(running, artifacts, dataset, args, retraining)
            rows = _with_gateway(running.address(), args, dataset, policies, config, world, daily)
    elif served:
        rows = _with_gateway(args.gateway, args, dataset, policies, config, world)
    else:
        rows = simulate(dataset, policies, config, world=world)
    summary = summarise(rows, dataset.n_items - 1, first_upload=dataset.n_items)
    report = {
        "config": {
            "days": args.days,
            "users": args.users,
            "sessions_per_day": args.sessions_per_day,
            "uploads_per_day": args.uploads_per_day,
            "unfollow_per_day": args.unfollow_per_day,
            "arms": list(args.arms),
            "explore": explore_overrides(args) if "explore" in args.arms else None,
            "seed": args.seed,
            "retrain": args.retrain if served else "never",
            "settings": args.settings if args.gateway is None else None,
            "item_cf": args.item_cf if args.gateway is None else None,
            "world": dataset.meta["config"],
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rows": summary,
        "headline": headline(summary),
        "retraining": retraining,
    }
    return report


def explore_overrides(args: argparse.Namespace) -> dict:
    """The `explore` arm's overrides (gateway/arms.py) from the --explore-* options; with 0
    slots the arm is the cascade itself (the same users as a run that explores: its baseline)."""
    if args.explore_slots == 0:
        return {"explore_slots": 0}
    overrides = {"explore_slots": args.explore_slots, "explore_max_age_s": args.explore_max_age_s}
    if args.explore_rate < 1:
        overrides["explore_rate"] = args.explore_rate
    if args.explore_position >= 0:
        overrides["explore_position"] = args.explore_position
    return overrides


def gateway_arms(args: argparse.Namespace, config: SimulationConfig) -> dict[str, str]:
    """The gateway's arms setting with the `explore` arm: every simulation arm in its order and
    share under the simulation's salt, so the gateway assigns each user the arm the simulation
    did (the reference arms are never asked); none without it (the gateway as configured)."""
    if "explore" not in args.arms:
        return {}
    arms = [
        {"name": arm.name, "share": arm.share}
        | ({"overrides": explore_overrides(args)} if arm.name == "explore" else {})
        for arm in config.arms
    ]
    return {"CASCADE_GATEWAY_ARMS": json.dumps(arms), "CASCADE_GATEWAY_ARM_SALT": config.salt}


def serving_copy(
    artifacts: Path, data_dir: Path, run_dir: Path, item_cf: str | None = None
) -> Path:
    """RUN_DIR/artifacts holding the published synthetic bundle (hard links), published there:
    the run's retrained bundles land beside it, never in ARTIFACTS. With `item_cf` naming another
    item-CF table than the bundle's, a copy with recall's tables rebuilt is published instead
    (the daily retrain keeps the setting: it is recorded in the bundle)."""
    stack.ensure_bundle(artifacts, data_dir, DATASET, "current")
    source = Bundle.open(artifacts)
    target = run_dir / "artifacts"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source.folder, target / source.folder.name, copy_function=_link)
    served = source.folder.name
    tables = source.component("recall").get("tables", {}).get("settings", {})
    if item_cf is not None and TableSettings.from_dict(tables).cf_model != item_cf:
        from cascade.data.split import split_dataset
        from services.recall.train import rebuild_tables

        served = f"{served}-{item_cf.replace('_', '-')}-cf"
        print(f"== rebuilding recall's tables with item-CF {item_cf} into {served}", flush=True)
        dataset = load_dataset(DATASET, data_dir)
        train = split_dataset(dataset).train_interactions
        settings = replace(TableSettings.from_dict(tables), cf_model=item_cf)
        rebuild_tables(target, source.folder.name, served, dataset, train, settings)
    publish(target, served)
    return target


def _link(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copy2(source, destination)


class DailyRetrain:
    """After each simulated day but the last: fold the stack's event log into the training data,
    publish a new bundle and wait until every service of the stack serves it."""

    def __init__(self, running, artifacts: Path, dataset, args, reports: list[dict]):
        self.running, self.artifacts, self.args, self.reports = running, artifacts, args, reports
        self.base = Base.of(dataset)
        self.log_url = f"file:{args.run_dir / 'eventlog'}"
        self.config = RetrainConfig(seed=args.seed)

    def __call__(self, day: int) -> None:
        if day + 1 >= self.args.days:
            return  # no later day would be served by it
        stack.wait_impressions_logged(self.running)  # the day's answers are all in the log
        # What the day added after the served bundle's position, on top of what it holds.
        read = read_log_since(self.log_url, Bundle.open(self.artifacts))
        version = f"loop-day{day + 2}"  # serves day day+2 (1-based)
        report = retrain(
            self.artifacts,
            self.base,
            read.events,
            read.impressions,
            version,
            self.config,
            self.args.data_dir,
            uploads=read.uploads,  # the day's new tracks join the next bundle
            log_position=read.position,
        )
        report["log_rows_read"] = read.rows_read
        started = time.perf_counter()
        wait_for_version(self.running, self.artifacts / version, timeout_s=600.0)
        report["reload_seconds"] = round(time.perf_counter() - started, 1)
        report["after_day"] = day
        print(f"day {day + 1}: retrained {json.dumps(report)}", flush=True)
        self.reports.append(report)


def wait_for_version(running, folder: Path, timeout_s: float) -> None:
    """Until every service's log says it serves the bundle in `folder` (cascade/reload.py logs
    each swap); RuntimeError when one could not load it or the time is up."""
    version, folder = folder.name, folder.resolve()
    deadline = time.monotonic() + timeout_s
    pending = [s for s in running.services if s.name != stack.REDIS]
    while pending:
        service = pending[0]
        text = Path(service.log).read_text(errors="replace")
        if f"now serving {version} " in text:
            pending.pop(0)
            continue
        if f"could not load the bundle at {folder}" in text:
            raise RuntimeError(
                f"{service.name} could not load {folder}:\n{stack.log_tail(service.log)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} still not serving {version} after {timeout_s} s")
        time.sleep(0.5)


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


def _with_gateway(address, args, dataset, policies, config, world, on_day_end=None):
    with CascadeClient(address, token=args.token, timeout_s=5.0) as client:
        # With the explore arm the gateway's arms mirror the simulation's; the first gateway arm
        # alone sends the uploads and follow changes (one catalogue behind both).
        named = "explore" in args.arms
        served = [name for name in args.arms if name in GATEWAY_ARMS]
        gateways = {
            name: GatewayPolicy(client, name if named else "", catalogue=name == served[0])
            for name in served
        }
        rows = simulate(dataset, policies | gateways, config, on_day_end, world)
    rejected = sum(gateway.rejected for gateway in gateways.values())
    if rejected:
        print(f"warning: the gateway rejected {rejected} simulated events")
    return rows


def to_markdown(report: dict) -> str:
    config = report["config"]
    lines = [
        "# The simulated world against the arms (ground-truth engagement)",
        "",
        f"{config['users']} simulated users of the synthetic world over {config['days']} "
        f"simulated days ({config['sessions_per_day']} sessions per user-day on average), pages "
        f"of 10, arms by salted hash of the user id; {config.get('uploads_per_day', 0)} uploads "
        f"per simulated day, P(unfollow) {config.get('unfollow_per_day', 0)} per user-day; "
        + (
            f"the cascade's stack: item-CF {config['item_cf']}, "
            + ", ".join(f"{k}={v}" for k, v in config["settings"].items())
            + "; "
            if config.get("settings") is not None
            else ""
        )
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
    lines += exploration_lines(report)
    if report.get("retraining"):
        lines += [
            "",
            f"Retraining ({config.get('retrain')}): after each day but the last, the event log "
            "folded into a new bundle (app/retrain.py) that every service hot-reloaded before "
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


def exploration_lines(report: dict) -> list[str]:
    """The explore arm against the cascade, per day: explored and fresh shares, the organic
    slots' fresh and upload shares (do uploads come to win slots of their own once the retrain
    has their plays?), and expected engagement with the ratio's 95% interval (delta method)."""
    by = {(row["arm"], row["day"]): row for row in report["rows"]}
    days = sorted({row["day"] for row in report["rows"] if row["arm"] == "explore"})
    if not days:
        return []
    lines = [
        "",
        f"Exploration: arm explore = cascade with {report['config'].get('explore')} (the same "
        "gateway and bundle; gateway/explore.py). Explored: share of impressions in explored "
        "slots; organic: the other slots; uploads: any track uploaded during the run.",
        "",
        "| day | arm | explored | fresh (<1 day) | organic fresh | organic uploads | expected "
        "| ± | explored slots' expected | explore / cascade | ± (95%) |",
        "|---" * 11 + "|",
    ]
    for day in days:
        for arm in ("cascade", "explore"):
            row = by.get((arm, day))
            if row is None:
                continue
            ratio = "-", "-"
            base = by.get(("cascade", day))
            if arm == "explore" and base is not None:
                value = row["expected_engagement"] / base["expected_engagement"]
                relative = (
                    (row["expected_ci95"] / row["expected_engagement"]) ** 2
                    + (base["expected_ci95"] / base["expected_engagement"]) ** 2
                ) ** 0.5
                ratio = f"{value:.3f}", f"{value * relative:.3f}"
            explored = row.get("explored_expected")
            lines.append(
                f"| {day} | {arm} | {row.get('explored_share', 0.0):.3f} "
                f"| {row['fresh_share']:.3f} | {row['organic_fresh_share']:.3f} "
                f"| {row.get('organic_upload_share', 0.0):.4f} "
                f"| {row['expected_engagement']:.4f} | {row['expected_ci95']:.4f} "
                f"| {'-' if explored is None else f'{explored:.4f}'} | {ratio[0]} | {ratio[1]} |"
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


# The service settings the simulated stack serves with, on top of the services' defaults (`--set`
# overrides or adds). The world's truth (cascade.data.synthetic.true_utility) has no diversity
# term, and on validation users (disjoint from the simulated ones) two changes raise its true
# engagement: rerank by relevance only (DPP theta 1 instead of 0.9) and recall from the item-CF
# channel's EASE neighbours alone, cut to 200 that rank re-orders. Measured with
# `python -m bench.funnel_tuning --reference served` (results/cascade/lift/).
SIMULATED_STACK = {
    "CASCADE_RERANK_RERANK_DPP_TRADE_OFF": "1.0",
    "CASCADE_RECALL_ITEM_CF_QUOTA": "1.0",
    "CASCADE_RECALL_MF_QUOTA": "0.0",
    "CASCADE_RECALL_TWO_TOWER_QUOTA": "0.0",
    "CASCADE_RECALL_PROFILE_QUOTA": "0.0",
    "CASCADE_RECALL_SOCIAL_QUOTA": "0.0",
    "CASCADE_RECALL_FRESH_QUOTA": "0.0",
    "CASCADE_RECALL_POPULAR_QUOTA": "0.0",
    "CASCADE_GATEWAY_RECALL_COUNT": "200",
    "CASCADE_GATEWAY_PRERANK_COUNT": "200",
}
SIMULATED_ITEM_CF = "ease"  # the item-CF table the simulated stack serves (see SIMULATED_STACK)


def arguments() -> argparse.ArgumentParser:
    """`cascade simulate`'s options (benches that drive `run` parse theirs with it too, so every
    option keeps its one default)."""
    parser = argparse.ArgumentParser(prog="cascade simulate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts/synthetic"),
        help="bundles for the synthetic stack (default: artifacts/synthetic)",
    )
    parser.add_argument("--gateway", help="address of a running gateway (default: start a stack)")
    parser.add_argument("--token", help="the gateway's API token, when it requires one")
    parser.add_argument("--days", type=int, default=2, help="simulated days (default: 2)")
    parser.add_argument("--users", type=int, default=500, help="simulated users (default: 500)")
    parser.add_argument(
        "--sessions-per-day",
        type=float,
        default=1.0,
        help="mean sessions per user and day (default: 1)",
    )
    parser.add_argument(
        "--uploads-per-day",
        type=int,
        default=20,
        help="new tracks creators upload through each simulated day, sent to every arm at "
        "their time (the cascade through the gateway's AddItems) (default: 20)",
    )
    parser.add_argument(
        "--unfollow-per-day",
        type=float,
        default=0.02,
        help="probability that a simulated user drops one follow on a day (default: 0.02)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["cascade", *REFERENCE_ARMS],
        choices=[*GATEWAY_ARMS, *REFERENCE_ARMS],
        help="arms, equal shares; explore: the cascade with exploration slots (--explore-*), "
        "served by the same gateway beside cascade",
    )
    parser.add_argument(
        "--explore-slots",
        type=int,
        default=1,
        help="page slots the explore arm gives recent uploads (default: 1; 0: the arm serves as "
        "cascade does, the baseline of a run that explores, with the same users)",
    )
    parser.add_argument(
        "--explore-max-age-s",
        type=int,
        default=86_400,
        help="uploads younger than this are explored (default: 86400, a day)",
    )
    parser.add_argument(
        "--explore-rate",
        type=float,
        default=1.0,
        help="share of the explore arm's requests that explore (default: 1)",
    )
    parser.add_argument(
        "--explore-position",
        type=int,
        default=-1,
        help="the first explored slot, 0-based (default: -1, the page's last slots)",
    )
    parser.add_argument(
        "--retrain",
        choices=("daily", "never"),
        default="daily",
        help="daily: after each simulated day, retrain the cascade from its event log and "
        "hot-reload the new bundle (app/retrain.py); never: serve the starting bundle throughout",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting of the started stack, as the environment variable the service "
        "reads (repeatable); added to or replacing the simulated stack's own settings (app/loop.py "
        f"SIMULATED_STACK: {', '.join(f'{k}={v}' for k, v in SIMULATED_STACK.items())})",
    )
    parser.add_argument(
        "--item-cf",
        choices=CF_MODELS,
        default=SIMULATED_ITEM_CF,
        help="the item-CF table the started stack serves; a bundle built with the other is "
        "copied with its recall tables rebuilt (`cascade train recall --from-bundle`) "
        f"(default: {SIMULATED_ITEM_CF})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the simulated users and the arm assignment (default: 0)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".cascade/simulate"),
        help="the stack's pid file and logs (default: .cascade/simulate)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/loop"),
        help="folder for simulation.{json,md,png} (default: results/loop)",
    )
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """`cascade simulate`'s options, the service settings merged over SIMULATED_STACK."""
    parser = arguments()
    args = parser.parse_args(argv)
    try:
        args.settings = SIMULATED_STACK | setting_overrides(args.settings)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulation.json").write_text(json.dumps(report, indent=2))
    (args.out / "simulation.md").write_text(to_markdown(report))
    plot(report, args.out / "simulation.png")
    print(to_markdown(report))
    print(f"saved {args.out}/simulation.json, .md and .png")


if __name__ == "__main__":
    main()
