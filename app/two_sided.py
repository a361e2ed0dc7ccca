"""The two-sided benchmark: each arm in a world of its own, one run per policy from the same seed,
in the two-sided world and in its neutral twin; writes results/loop/two_sided/simulation.*.

One world per policy, not a shared one: creators react to the plays a policy gives them, so
"active creators" and "uploads per day" are a policy's only when its own world produced them (in
a shared world every arm's users would watch every arm's creators). The same seed gives every run
the same simulated users, the same schedule of sessions and the same world at the start, so the
consumer metrics of different arms compare as in an A/B test with every user in every arm. Each
(world, arm) run checkpoints after every day (world, in-process policies, impressions, random
streams; the cascade's event log and bundles stay in its run folder) and a finished one leaves its
result file: rerunning the same command resumes where an interruption stopped it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.loop import (
    DATASET,
    GATEWAY_ARMS,
    arguments,
    daily_retrain,
    gateway_arms,
    harness,
    pool_settings,
    served_stack,
    serving_copy,
)
from app.profiles import train_settings
from cascade.config import SettingsError
from cascade.data import load_dataset
from cascade.data.schema import Dataset
from cascade.data.synthetic import DAY, SyntheticConfig, exposure_target
from cascade.profiles import load_profile
from gateway.arms import Arm
from gateway.client import CascadeClient
from research.loop_report import _ratio
from research.simulate import (
    REFERENCE_ARMS,
    GatewayPolicy,
    SimulationConfig,
    World,
    reference_policy,
    simulate,
)
from research.two_sided_metrics import cold_start, day_metrics, gap_closed

WORLDS = {"two-sided": False, "neutral": True}  # name: neutral?


def run(args: argparse.Namespace) -> dict:
    dataset = load_dataset(DATASET, args.data_dir)
    world = SyntheticConfig(**dataset.meta["config"])
    users = min(args.users, dataset.n_users)
    target = exposure_target(world, users)
    state = args.state_dir / run_key(args, world)  # another setting: another run, not a resume
    state.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, neutral in WORLDS.items():
        for arm in args.arms if not neutral else args.neutral_arms:
            done = state / f"{name}-{arm}.json"
            if not done.exists() or len(json.loads(done.read_text())["days"]) != args.days:
                result = run_arm(args, dataset, name, arm, target, state / f"{name}-{arm}.pkl")
                done.write_text(json.dumps(result))
            runs.append(json.loads(done.read_text()))
    for name in WORLDS:
        for day in range(args.days):
            gap_closed({r["arm"]: r["days"][day] for r in runs if r["world"] == name})
    return {
        "config": {
            "days": args.days,
            "users": users,
            "sessions_per_day": args.sessions_per_day,
            "unfollow_per_day": args.unfollow_per_day,
            "arms": list(args.arms),
            "neutral_arms": list(args.neutral_arms),
            "seed": args.seed,
            "retrain": args.retrain,
            "profile": args.served_profile.record(),
            "pool": dataclasses.asdict(pool_settings(args.served_profile, target)),
            "design": "one world per policy from the same seed",
        },
        "world": {
            "hash": world.world_hash(),
            "neutral_hash": world.neutral().world_hash(),
            "parameters": dataset.meta["config"],
            "uploads_per_day": round(world.uploads_per_day, 1),
        },
        "exposure_target": {
            "K": target,
            "formula": "K = max(1, round(platform_target_impressions * simulated users / "
            f"world users)) = max(1, round({world.platform_target_impressions} * {users} / "
            f"{world.n_users}))",
        },
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "seconds_per_day": {f"{r['world']}/{r['arm']}": r["seconds_per_day"] for r in runs},
        "runs": runs,
        "headline": headline(runs),
    }


def run_key(args: argparse.Namespace, world: SyntheticConfig) -> str:
    """What a run's checkpoints belong to: every option but the number of days (a longer run
    resumes from a shorter one's last day) and the world's hash."""
    options = [args.users, args.seed, args.sessions_per_day, args.unfollow_per_day]
    options += [args.uploads_per_day, args.retrain, args.served_profile.record()["sha256"]]
    text = json.dumps([options, world.world_hash()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_arm(
    args: argparse.Namespace, dataset: Dataset, world_name: str, arm: str, target: int, ckpt: Path
) -> dict:
    """One arm's world for args.days days (resumed from `ckpt` when it exists)."""
    config = SimulationConfig(
        days=args.days,
        users=args.users,
        sessions_per_day=args.sessions_per_day,
        arms=(Arm(arm),),
        seed=args.seed,
        uploads_per_day=args.uploads_per_day,
        unfollow_per_day=args.unfollow_per_day,
    )
    share = min(args.users, dataset.n_users) / dataset.n_users
    world = World(dataset, neutral=WORLDS[world_name], audience_share=share)
    seconds: list[float] = []
    clock = [time.perf_counter()]
    retraining: list[dict] = []

    def timed(day: int, then: Callable[[int], None] | None = None) -> None:
        if then is not None:
            then(day)
        seconds.append(round(time.perf_counter() - clock[0], 1))
        clock[0] = time.perf_counter()

    print(f"== {world_name} world, arm {arm}", flush=True)
    if arm in REFERENCE_ARMS:
        pool = pool_settings(args.served_profile, target)  # ease+pool: the profile's, K scaled
        policies = {arm: reference_policy(arm, dataset, world, args.seed, pool)}
        rows = simulate(dataset, policies, config, timed, world, ckpt)
    else:
        rows = _served(
            args, dataset, world_name, arm, config, world, ckpt, timed, retraining, target
        )
    start = (world.end_ts // DAY + 1) * DAY
    days = day_metrics(rows, world, start, args.days, target)
    return {
        "world": world_name,
        "arm": arm,
        "days": days,
        "cold_start": cold_start(rows, world, start, args.days, target),
        "seconds": round(sum(seconds), 1),
        "seconds_per_day": seconds,  # of this process (a resumed run: its days after resuming)
        "retraining": retraining,
    }


def _served(
    args: argparse.Namespace,
    dataset: Dataset,
    world_name: str,
    arm: str,
    config: SimulationConfig,
    world: World,
    ckpt: Path,
    timed: Callable[..., None],
    retraining: list[dict],
    target: int,
) -> dict[str, np.ndarray]:
    """The arm served by a stack of its own (RUN_DIR/<world>-<arm>), retrained daily; on resume
    it serves the last bundle the run published and keeps its event log."""
    ns = argparse.Namespace(**vars(args))
    ns.run_dir, ns.arms = args.run_dir / f"{world_name}-{arm}", [arm]
    if ckpt.exists():
        artifacts = ns.run_dir / "artifacts"
    else:
        artifacts = serving_copy(args.artifacts, args.data_dir, ns.run_dir, args.item_cf)
        shutil.rmtree(ns.run_dir / "eventlog", ignore_errors=True)
    env = harness(target) | gateway_arms(ns, config)
    with served_stack(args, ns.run_dir, artifacts, env) as running:
        daily = daily_retrain(running, artifacts, dataset, ns, retraining)
        with CascadeClient(running.address(), timeout_s=5.0) as client:
            gateway = GatewayPolicy(client, arm if arm == "no-pool" else "")
            return simulate(dataset, {arm: gateway}, config, lambda d: timed(d, daily), world, ckpt)


def headline(runs: list[dict]) -> dict:
    """cascade / EASE on expected engagement on the last day, in the two-sided world and in the
    neutral one; per arm, the share of uploads that reached K in 24 h (all days' eligible
    uploads) and the active creators on the last day."""
    by = {(r["world"], r["arm"]): r for r in runs}
    out: dict = {}
    for key, world in (("cascade_vs_ease_last_day", "two-sided"), ("neutral", "neutral")):
        if (world, "cascade") in by and (world, "ease") in by:
            a, b = by[world, "cascade"]["days"][-1], by[world, "ease"]["days"][-1]
            ratio = _ratio(
                (a["expected_engagement"], a["expected_ci95"]),
                (b["expected_engagement"], b["expected_ci95"]),
            )
            out["neutral_cascade_vs_ease_last_day" if key == "neutral" else key] = ratio
    reached, active, followers = {}, {}, {}
    for (world, arm), r in by.items():
        if world != "two-sided":
            continue
        eligible = [d["uploads"] - d["uploads_excluded"] for d in r["days"]]
        hits = sum(
            (d["reaching_target_24h"] or 0) * n for d, n in zip(r["days"], eligible, strict=True)
        )
        reached[arm] = round(hits / sum(eligible), 4) if sum(eligible) else None
        active[arm] = r["days"][-1]["active_creators"]
        followers[arm] = r.get("cold_start", {}).get("followers_shown_1h_share")
    out["uploads_reaching_target_24h"] = reached
    out["active_creators_last_day"] = active
    out["followers_shown_upload_1h"] = followers
    return out


def users_for_interval(report: dict, half_width: float = 0.08) -> dict | None:
    """Simulated users per arm for a cascade / EASE interval of +-half_width on one day, from
    the measured one (half-widths shrink as 1 / sqrt(users)); without a cascade run, from
    EASE's own relative interval taken twice (a ratio near 1 of two arms as noisy as EASE)."""
    measured = report["headline"].get("cascade_vs_ease_last_day")
    basis = "cascade / EASE, last day"
    if not measured:
        ease = [r for r in report["runs"] if (r["world"], r["arm"]) == ("two-sided", "ease")]
        if not ease:
            return None
        last = ease[0]["days"][-1]
        relative = last["expected_ci95"] / last["expected_engagement"]
        measured = {"ci95": relative * 2**0.5}
        basis = "EASE's relative interval, last day, times sqrt(2)"
    users = report["config"]["users"]
    needed = int(np.ceil(users * (measured["ci95"] / half_width) ** 2))
    return {"users": needed, "measured_ci95": round(measured["ci95"], 4), "basis": basis}


def options() -> argparse.ArgumentParser:
    parser = arguments()
    parser.prog = "python -m app.two_sided"
    parser.description = __doc__.split("\n")[0]
    parser.set_defaults(
        out=Path("results/loop/two_sided"),
        run_dir=Path(".cascade/two-sided"),
        arms=["cascade", *REFERENCE_ARMS],
    )
    parser.add_argument(
        "--neutral-arms",
        nargs="+",
        default=["cascade", "ease", "random", "oracle"],
        choices=[*GATEWAY_ARMS, *REFERENCE_ARMS],
        help="arms also run in the neutral world (default: cascade ease random oracle)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="per-day checkpoints and finished runs (default: RUN_DIR/state); rerun to resume",
    )
    parser.add_argument(
        "--label", default="", help="a line the report opens with (e.g. a short run's purpose)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = options()
    args = parser.parse_args(argv)
    try:  # the profile the cascade arms serve, exactly (as `cascade simulate`)
        args.served_profile = load_profile(args.profile)
        args.item_cf = train_settings([args.served_profile]).item_cf
        pool_settings(args.served_profile, 1)  # a bad pool setting: refused before any arm runs
    except SettingsError as error:
        parser.error(str(error))
    args.state_dir = args.state_dir or args.run_dir / "state"
    started = time.perf_counter()
    report = run(args)
    report["label"] = args.label
    report["wall_seconds_this_process"] = round(time.perf_counter() - started, 1)
    report["users_for_ci_0.08"] = users_for_interval(report)
    from research.two_sided_report import plot, to_markdown

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulation.json").write_text(json.dumps(report, indent=2))
    (args.out / "simulation.md").write_text(to_markdown(report))
    plot(report, args.out / "simulation.png")
    print(to_markdown(report))
    print(f"saved {args.out}/simulation.json, .md and .png")


if __name__ == "__main__":
    main()
