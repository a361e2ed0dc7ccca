"""`cascade simulate`: the synthetic world's users against the running cascade and the reference
arms, judged on the world's truth; writes results/loop/simulation.{json,md,png}.

Starts its own local stack on the synthetic bundle (trained into ARTIFACTS when missing) unless
`--gateway` names a running one. `make bench-loop` runs it at the size stated in the Makefile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from app import stack
from app.simulate import (
    REFERENCE_ARMS,
    GatewayPolicy,
    SimulationConfig,
    World,
    reference_policy,
    simulate,
    summarise,
)
from cascade.data import load_dataset
from gateway.arms import Arm
from gateway.client import CascadeClient

DATASET = "synthetic"


def run(args: argparse.Namespace) -> dict:
    dataset = load_dataset(DATASET, args.data_dir)
    arms = tuple(Arm(name) for name in args.arms)
    config = SimulationConfig(
        days=args.days,
        users=args.users,
        sessions_per_day=args.sessions_per_day,
        arms=arms,
        seed=args.seed,
    )
    world = World(dataset)
    policies = {
        name: reference_policy(name, dataset, world, args.seed)
        for name in args.arms
        if name in REFERENCE_ARMS
    }
    started = time.perf_counter()
    if "cascade" in args.arms and args.gateway is None:
        with stack.running_stack(
            args.run_dir, artifacts=args.artifacts, data_dir=args.data_dir, dataset=DATASET
        ) as running:
            rows = _with_gateway(running.address(), args, dataset, policies, config)
    elif "cascade" in args.arms:
        rows = _with_gateway(args.gateway, args, dataset, policies, config)
    else:
        rows = simulate(dataset, policies, config)
    report = {
        "config": {
            "days": args.days,
            "users": args.users,
            "sessions_per_day": args.sessions_per_day,
            "arms": list(args.arms),
            "seed": args.seed,
            "world": dataset.meta["config"],
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rows": summarise(rows, dataset.n_items - 1),
    }
    return report


def _with_gateway(address, args, dataset, policies, config):
    with CascadeClient(address, token=args.token, timeout_s=5.0) as client:
        gateway = GatewayPolicy(client)
        rows = simulate(dataset, policies | {"cascade": gateway}, config)
    if gateway.rejected:
        print(f"warning: the gateway rejected {gateway.rejected} simulated events")
    return rows


def to_markdown(report: dict) -> str:
    config = report["config"]
    lines = [
        "# The simulated world against the arms (ground-truth engagement)",
        "",
        f"{config['users']} simulated users of the synthetic world over {config['days']} "
        f"simulated days ({config['sessions_per_day']} sessions per user-day on average), pages "
        f"of 10, arms by salted hash of the user id; {report['seconds']} s.",
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
    return "\n".join(lines) + "\n"


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


def main(argv: list[str] | None = None) -> None:
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
        "--arms",
        nargs="+",
        default=["cascade", *REFERENCE_ARMS],
        choices=["cascade", *REFERENCE_ARMS],
        help="arms, equal shares",
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
    args = parser.parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "simulation.json").write_text(json.dumps(report, indent=2))
    (args.out / "simulation.md").write_text(to_markdown(report))
    plot(report, args.out / "simulation.png")
    print(to_markdown(report))
    print(f"saved {args.out}/simulation.json, .md and .png")


if __name__ == "__main__":
    main()
