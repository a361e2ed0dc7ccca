"""What the shared Redis store costs over the embedded one: per stage and end to end, one at a
time and at saturation, both stacks measured in one run.

Three local stacks run side by side on free loopback ports: one with `store = "memory"`, one with
a redis-server (AOF, appendfsync always) shared by all its services, one with a 3-master Redis
Cluster of such servers (`redis+cluster://`). Rounds alternate between them (memory, redis,
cluster, memory, ...) so machine noise hits all alike; each round runs bench/load's
closed loop with 1 worker (one at a time) and with `--saturation-workers` workers, and times
Feedback calls one at a time. Per-stage latencies are the gateway's own trace measurements.
Reported: medians over the rounds of each p50/p99, the redis / memory ratios and the cluster's
per-request cost beside the single server's (cluster / redis).

    python -m bench.state_latency --out results/state   (needs a trained bundle: make demo)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from app import stack
from bench.load import closed_loop, summarize
from cascade.redis_server import RedisClusterProcesses
from cascade.topology import DEFAULT_METRICS_PORTS, DEFAULT_PORTS
from gateway.client import CascadeClient

BACKENDS = ("memory", "redis", "redis-cluster")


def feedback_latency(target: str, users: np.ndarray, n: int, rng) -> dict:
    """Feedback (one play each) one at a time: the write path of each backend."""
    times = []
    with CascadeClient(target, timeout_s=5.0) as client:
        for user in users[:n].tolist():
            item = int(rng.integers(1, 1600))
            started = time.perf_counter()
            client.feedback([(user, item, "play")])
            times.append(1e3 * (time.perf_counter() - started))
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "requests": n}


def one_round(target: str, users: np.ndarray, args, rng) -> dict:
    row = {}
    for label, workers in (("one_at_a_time", 1), ("saturation", args.saturation_workers)):
        samples, seconds = asyncio.run(
            closed_loop(target, users, workers, args.duration, args.timeout)
        )
        row[label] = summarize(samples, seconds)
    row["feedback_one_at_a_time"] = feedback_latency(target, users, args.feedback, rng)
    return row


def median_of(rounds: list[dict], path: tuple[str, ...]) -> float:
    values = []
    for row in rounds:
        for key in path:
            row = row.get(key, {}) if isinstance(row, dict) else {}
        if isinstance(row, (int, float)):
            values.append(row)
    return round(float(np.median(values)), 2) if values else float("nan")


def combine(rounds: dict[str, list[dict]]) -> dict:
    """Medians over rounds per backend, the redis / memory and cluster / redis ratios."""
    paths = []
    for mode in ("one_at_a_time", "saturation"):
        paths += [(mode, "p50_ms"), (mode, "p99_ms"), (mode, "throughput_rps")]
        stages = rounds["memory"][0][mode]["stages"]
        paths += [(mode, "stages", s, q) for s in stages for q in ("p50_ms", "p99_ms")]
    paths += [("feedback_one_at_a_time", "p50_ms"), ("feedback_one_at_a_time", "p99_ms")]
    table = {}
    for path in paths:
        memory, redis, cluster = (median_of(rounds[b], path) for b in BACKENDS)
        table[" ".join(p for p in path if p != "stages")] = {
            "memory": memory,
            "redis": redis,
            "ratio": round(redis / memory, 2) if memory else None,
            "redis_cluster": cluster,
            "cluster_vs_redis": round(cluster / redis, 2) if redis else None,
        }
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/state-latency"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per closed loop")
    parser.add_argument("--saturation-workers", type=int, default=16)
    parser.add_argument("--feedback", type=int, default=200, help="Feedback calls per round")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("results/state"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    from cascade.data import load_dataset

    users = rng.permutation(load_dataset(args.dataset, args.data_dir).users["user_id"])
    rounds: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    with ExitStack() as stacks:
        cluster = RedisClusterProcesses.start(args.run_dir / "cluster")
        stacks.callback(cluster.stop)  # stopped after the stacks that use it
        stores = {"memory": "memory", "redis": "redis", "redis-cluster": cluster.url}
        targets = {
            backend: stacks.enter_context(
                stack.running_stack(
                    args.run_dir / backend,
                    artifacts=args.artifacts,
                    data_dir=args.data_dir,
                    dataset=args.dataset,
                    store=stores[backend],
                    timeout_s=300.0,
                    ports=dict.fromkeys([*DEFAULT_PORTS, stack.REDIS], 0),  # free ports only
                    metrics_ports=dict.fromkeys(DEFAULT_METRICS_PORTS, 0),
                )
            ).address("gateway")
            for backend in BACKENDS
        }
        for backend in BACKENDS:  # warm-up
            asyncio.run(closed_loop(targets[backend], users[:50], 4, 3.0, args.timeout))
        for number in range(args.rounds):
            for backend in BACKENDS:
                row = one_round(targets[backend], users, args, rng)
                rounds[backend].append(row)
                brief = {m: row[m]["p50_ms"] for m in ("one_at_a_time", "saturation")}
                print(f"round {number + 1} {backend}: p50 {brief}", flush=True)
    report = {
        "machine": "shared 2-core VM, the three stacks on it at once (measured in turn)",
        "cluster": "3 masters, no replicas, slots split evenly, AOF appendfsync always",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "saturation_workers": args.saturation_workers,
        "medians": combine(rounds),
        "per_round": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, row in report["medians"].items():
        print(
            f"{name:<40} memory {row['memory']:>8}  redis {row['redis']:>8}  x{row['ratio']}  "
            f"cluster {row['redis_cluster']:>8}  x{row['cluster_vs_redis']} of redis"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
