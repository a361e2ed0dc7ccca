"""`cascade simulate`: the synthetic world's users against the running cascade and the reference
arms, judged on the world's truth; writes results/loop/simulation.{json,md,png}.

Starts its own local stack on a copy of the synthetic bundle (trained into ARTIFACTS when
missing), on the simulated clock (gateway clock "caller"), unless `--gateway` names a running one.
The stack serves exactly the profile `--profile` names (deploy/profiles/NAME.toml; a setting from
the caller's environment is refused); the report records its name and sha256, and the arms that
deviate from it (`no-pool`) and how. The simulator scales the traffic pool's target K to its
audience (`cascade.data.synthetic.exposure_target`), for the served stack and the ease+pool arm.
With `--retrain daily` (the default) a job folds each simulated day's event log into the training
data after the day (training/retrain.py), publishes a new bundle into RUN_DIR/artifacts and
waits until every service hot-reloaded it before the next day starts. `make bench-loop` runs it
at the size stated in the Makefile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

from app import stack
from app.profiles import train_settings
from cascade import profiles
from cascade.artifacts import Bundle, publish
from cascade.config import SettingsError, load_settings
from cascade.data import load_dataset
from cascade.data.synthetic import SyntheticConfig, exposure_target
from cascade.profiles import Profile, default_profile, load_profile
from cascade.topology import GATEWAY, STAGES, spec
from cascade.traffic_pool import PoolSettings
from gateway.arms import Arm
from gateway.client import CascadeClient
from research.loop_report import headline, plot, to_markdown
from research.simulate import (
    REFERENCE_ARMS,
    GatewayPolicy,
    SimulationConfig,
    World,
    reference_policy,
    simulate,
    summarise,
)
from services.recall.tables import TableSettings
from training.daily import DailyRetrain

DATASET = "synthetic"
# Arms the running gateway serves: the cascade as configured, and `no-pool` (the cascade with the
# traffic pool for uploads off, gateway/pool.py) beside it on the same stack.
GATEWAY_ARMS = ("cascade", "no-pool")
NO_POOL = {"pool": {"slots": 0}}


def run(args: argparse.Namespace) -> dict:
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
    served = [name for name in args.arms if name in GATEWAY_ARMS]
    if served and args.gateway is None:  # first: a refused setting costs no data or bundle copy
        stack.check_profiles([args.served_profile], HARNESS | gateway_arms(args, config), True)
    dataset = load_dataset(DATASET, args.data_dir)
    target = exposure_target(SyntheticConfig(**dataset.meta["config"]), config.users)
    extra_env = harness(target) | gateway_arms(args, config)
    world = World(dataset)
    pool = pool_settings(args.served_profile, target)
    policies = {
        name: reference_policy(name, dataset, world, args.seed, pool)
        for name in args.arms
        if name in REFERENCE_ARMS
    }
    started = time.perf_counter()
    retraining: list[dict] = []
    if served and args.gateway is None:
        artifacts = serving_copy(args.artifacts, args.data_dir, args.run_dir, args.item_cf)
        shutil.rmtree(args.run_dir / "eventlog", ignore_errors=True)  # this run's log only
        with served_stack(args, args.run_dir, artifacts, extra_env) as running:
            daily = daily_retrain(running, artifacts, dataset, args, retraining)
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
            "pool_target": target,
            "seed": args.seed,
            "retrain": args.retrain if served else "never",
            "world": dataset.meta["config"],
            "world_hash": SyntheticConfig(**dataset.meta["config"]).world_hash(),
        },
        "profile": served_profile(args, target),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": summary,
        "headline": headline(summary),
        "retraining": retraining,
    }
    return report


# What the simulator itself sets in the served stack beyond the profile: the simulated clock,
# and (`harness`) the traffic pool's K scaled to the simulated audience.
HARNESS = {"CASCADE_GATEWAY_CLOCK": "caller"}


def harness(target: int) -> dict[str, str]:
    return HARNESS | {"CASCADE_GATEWAY_POOL_TARGET": str(target)}


def pool_settings(profile: Profile, target: int) -> PoolSettings:
    """The traffic pool the profile serves, with the simulation's K (the ease+pool arm's)."""
    from gateway.settings import GatewaySettings

    gateway = load_settings(
        GatewaySettings,
        env_prefix=spec("gateway").env_prefix,
        environ={},
        profiles=profiles.layers([profile], "gateway"),
    )
    return replace(gateway.pool, target=target)


def served_profile(args: argparse.Namespace, target: int) -> dict:
    """The report's record of what the cascade arms served: the profile (name, content hash),
    the simulator's own settings, and each arm that deviates from the profile and how."""
    if args.gateway is not None:
        return {"name": None, "note": f"a running gateway at {args.gateway}: not started here"}
    arms = {"no-pool": NO_POOL} if "no-pool" in args.arms else {}
    return args.served_profile.record() | {"harness": harness(target), "arms": arms}


def served_stack(
    args: argparse.Namespace, run_dir: Path, artifacts: Path, extra_env: dict[str, str]
) -> AbstractContextManager[stack.Stack]:
    """The simulated stack: the synthetic bundle in `artifacts`, serving exactly the profile
    `args` names (a setting it does not say is refused, not served) plus `extra_env`."""
    return stack.running_stack(
        run_dir,
        artifacts=artifacts,
        data_dir=args.data_dir,
        dataset=DATASET,
        extra_env=extra_env,
        profiles=[args.served_profile],
        exact=True,
    )


def daily_retrain(
    running: stack.Stack, artifacts: Path, dataset, args: argparse.Namespace, reports: list[dict]
) -> DailyRetrain | None:
    """With `--retrain daily`, the job run after each simulated day on `running`'s log."""
    if args.retrain != "daily":
        return None
    return DailyRetrain(
        {s: running.address(s) for s in (GATEWAY.name, *STAGES) if running.has(s)},
        artifacts,
        dataset,
        args,
        reports,
        wait_logged=lambda: stack.wait_impressions_logged(running),
    )


def gateway_arms(args: argparse.Namespace, config: SimulationConfig) -> dict[str, str]:
    """The gateway's arms setting with the `no-pool` arm: every simulation arm in its order and
    share under the simulation's salt, so the gateway assigns each user the arm the simulation
    did (the reference arms are never asked); none without it (the gateway as configured)."""
    if "no-pool" not in args.arms:
        return {}
    arms = [
        {"name": arm.name, "share": arm.share}
        | ({"overrides": NO_POOL} if arm.name == "no-pool" else {})
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


def _with_gateway(address, args, dataset, policies, config, world, on_day_end=None):
    with CascadeClient(address, token=args.token, timeout_s=5.0) as client:
        # With the no-pool arm the gateway's arms mirror the simulation's; the first gateway arm
        # alone sends the uploads and follow changes (one catalogue behind both).
        named = "no-pool" in args.arms
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
        default=None,
        help="new tracks uploaded through each simulated day, sent to every arm at their time "
        "(the cascade through the gateway's AddItems) (default: as the world's creators decide, "
        "cascade/data/two_sided.py, at the world's rate SyntheticConfig.uploads_per_day)",
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
        help="arms, equal shares; no-pool: the cascade with the traffic pool off, served by "
        "the same gateway beside cascade; ease+pool: EASE with the same traffic pool",
    )
    parser.add_argument(
        "--retrain",
        choices=("daily", "never"),
        default="daily",
        help="daily: after each simulated day, retrain the cascade from its event log and "
        "hot-reload the new bundle (training/retrain.py); never: serve the starting bundle "
        "throughout",
    )
    parser.add_argument(
        "--profile",
        default=default_profile(DATASET),
        help="the profile the started stack serves, exactly (deploy/profiles/NAME.toml; a "
        "setting differing from it is refused unless an arm makes it); a bundle built with "
        "another item-CF table than its [train] one is copied with recall's tables rebuilt "
        f"(default: {default_profile(DATASET)}, the synthetic world's default profile)",
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
        default=Path("data/run/loop"),
        help="folder for simulation.{json,md,png} (default: data/run/loop; `make bench-loop` "
        "writes the committed results/loop)",
    )
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """`cascade simulate`'s options, with the profile loaded and checked (file, key, reason)."""
    parser = arguments()
    args = parser.parse_args(argv)
    try:
        args.served_profile = load_profile(args.profile)
        args.item_cf = train_settings([args.served_profile]).item_cf
    except SettingsError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        report = run(args)
    except stack.StackError as error:  # e.g. a setting its profile does not say: refused
        print(f"cascade simulate: {error}", file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulation.json").write_text(json.dumps(report, indent=2))
    (args.out / "simulation.md").write_text(to_markdown(report))
    plot(report, args.out / "simulation.png")
    print(to_markdown(report))
    print(f"saved {args.out}/simulation.json, .md and .png")


if __name__ == "__main__":
    main()
