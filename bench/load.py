"""Load test of the whole stack over loopback, from a separate process, plus the in-process twin.

Closed loop: N workers, each sends its next Recommend when the previous answer came back.
Open loop: requests sent at a fixed rate whatever the answers do, by --sender-processes sender
processes of their own (bench/sender.py: one event loop alone falls behind its schedule on a busy
machine); latency counts from the time a request was due (so a backlog, the sender's included,
shows up as latency, not as a lower offered rate), and the senders' own lag is reported beside it.
Every request asks for the debug trace, so the per-stage latencies come from the gateway's own
measurements. The highest open-loop rate held is the one with p99 < 50 ms, no errors, and
throughput >= 95% of the offered rate. Then the same models run as plain function calls in this
process (bench/inprocess.py); the microservice overhead is the ratio of the one-at-a-time medians.

    python -m bench.load --out results/cascade [--rates 50 100 200 300] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from app import stack
from bench import sender
from cascade.v1 import gateway_pb2, gateway_pb2_grpc

P99_LIMIT_MS = 50.0


@dataclass
class Sample:
    latency_ms: float
    code: str  # "OK" or the gRPC status name
    degraded: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # stage -> its latency in ms
    lag_ms: float = 0.0  # from the time it was due to the time it was sent (the sender's delay)
    nice: int = 0  # the sender's scheduling priority (bench/sender.py)


async def _recommend(stub, user_id: int, due: float, timeout_s: float) -> Sample:
    request = gateway_pb2.RecommendRequest(user_id=user_id, count=10, debug=True)
    try:
        answer = await stub.Recommend(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return Sample(1e3 * (time.perf_counter() - due), error.code().name)
    stages = {trace.stage: trace.latency_ms for trace in answer.trace}
    return Sample(1e3 * (time.perf_counter() - due), "OK", answer.degraded, stages)


async def closed_loop(target: str, users: np.ndarray, workers: int, seconds: float, timeout_s):
    samples: list[Sample] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        end = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < end:
                samples.append(
                    await _recommend(
                        stub, int(users[i % len(users)]), time.perf_counter(), timeout_s
                    )
                )
                i += workers

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        return samples, time.perf_counter() - started


def open_loop(
    target: str, users: np.ndarray, rate: float, seconds: float, timeout_s, processes: int = 2
) -> tuple[list[Sample], float]:
    """A fixed rate from `processes` sender processes (bench/sender.py), with the debug trace."""
    records, took = sender.fixed_rate(target, users, rate, seconds, timeout_s, True, processes)
    return [
        Sample(
            r["latency_ms"],
            r["code"],
            r["degraded"],
            r["stages"],
            r["latency_ms"] - r["sent_ms"],
            r["nice"],
        )
        for r in records
    ], took


async def fixed_rate(
    target: str,
    users: np.ndarray,
    rate: float,
    seconds: float,
    ask: Callable[..., Awaitable],
    start: float | None = None,
) -> tuple[list, float]:
    """Sends at `rate` from `start` (default now) whatever the answers do; `ask(stub, user,
    due)` makes one request. Returns the answers and the seconds the run took."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        start = time.perf_counter() if start is None else start
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(ask(stub, int(users[i % len(users)]), due)))
        answers = await asyncio.gather(*tasks)
        return list(answers), time.perf_counter() - start


def cpu_seconds(running: stack.Stack) -> dict[str, float]:
    """CPU time (user + system) each service process, and this load generator, used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {"load generator": time.process_time()}
    for service in running.services:
        fields = Path(f"/proc/{service.pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[service.name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def summarize(samples: list[Sample], seconds: float) -> dict:
    ok = [s for s in samples if s.code == "OK"]
    latency = np.array([s.latency_ms for s in ok]) if ok else np.array([np.nan])
    errors: dict[str, int] = {}
    for s in samples:
        if s.code != "OK":
            errors[s.code] = errors.get(s.code, 0) + 1
    stages: dict[str, dict] = {}
    for name in dict.fromkeys(n for s in ok for n in s.stages):
        values = np.array([s.stages[name] for s in ok if name in s.stages])
        stages[name] = _percentiles(values)
    return {
        "requests": len(samples),
        "seconds": round(seconds, 2),
        "throughput_rps": round(len(ok) / seconds, 1),
        **_percentiles(latency),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "degraded": sum(s.degraded for s in ok),
        "sender_lag_p99_ms": round(float(np.percentile([s.lag_ms for s in samples], 99)), 2),
        "sender_nice": max(s.nice for s in samples),
        "stages": stages,
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
    }


def held(row: dict, rate: float) -> bool:
    return (
        row["p99_ms"] < P99_LIMIT_MS and row["errors"] == 0 and row["throughput_rps"] >= 0.95 * rate
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    rows = report["open_loop"]
    rates = [r["rate"] for r in rows]
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        left.plot(rates, [r[key] for r in rows], marker="o", label=key)
    left.axhline(P99_LIMIT_MS, color="grey", linestyle="--", label="p99 limit")
    left.set(
        xlabel="offered rate (req/s)",
        ylabel="latency (ms)",
        yscale="log",
        title="open loop, end to end",
    )
    left.legend()
    one = report["closed_loop"][0]
    names = list(one["stages"])
    right.bar(
        names + ["end to end", "in-process"],
        [one["stages"][n]["p50_ms"] for n in names]
        + [one["p50_ms"], report["in_process"]["p50_ms"]],
    )
    right.set(ylabel="p50 (ms)", title="one at a time: per stage, end to end, in one process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/bench"))
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 150, 200, 300])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per open-loop rate")
    parser.add_argument("--closed-duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=1.0, help="client deadline, seconds")
    parser.add_argument("--in-process-requests", type=int, default=1000)
    parser.add_argument(
        "--sender-processes", type=int, default=2, help="open-loop sender processes"
    )
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with stack.running_stack(
        args.run_dir, artifacts=args.artifacts, data_dir=args.data_dir, dataset=args.dataset
    ) as running:
        from cascade.data import load_dataset

        users = rng.permutation(load_dataset(args.dataset, args.data_dir).users["user_id"])
        target = running.address("gateway")
        asyncio.run(closed_loop(target, users[:50], 4, 3.0, args.timeout))  # warm-up
        report: dict = {"target": target, "services": [s.name for s in running.services]}
        # The machine's 1-minute load average (runnable processes; 2 shared cores).
        report["load_average"] = {"start": round(os.getloadavg()[0], 2)}
        report["closed_loop"] = []
        for workers in args.workers:
            before = cpu_seconds(running)
            samples, seconds = asyncio.run(
                closed_loop(target, users, workers, args.closed_duration, args.timeout)
            )
            row = {"workers": workers, **summarize(samples, seconds)}
            # Where the CPU goes: each process's CPU time over the run, per request.
            spent = {name: cpu - before[name] for name, cpu in cpu_seconds(running).items()}
            row["cpu_ms_per_request"] = {
                name: round(1e3 * cpu / len(samples), 2) for name, cpu in spent.items()
            }
            print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)
            report["closed_loop"].append(row)
        report["open_loop"] = []
        for rate in args.rates:
            samples, seconds = open_loop(
                target, users, rate, args.duration, args.timeout, args.sender_processes
            )
            row = {"rate": rate, **summarize(samples, seconds)}
            row["held"] = held(row, rate)
            print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)
            report["open_loop"].append(row)
    rates_held = [r["rate"] for r in report["open_loop"] if r["held"]]
    report["highest_rate_held"] = max(rates_held, default=None)
    # Same run: the held rate against the closed-loop saturation (the most workers' throughput).
    report["saturation_rps"] = max(r["throughput_rps"] for r in report["closed_loop"])
    if report["highest_rate_held"]:
        report["held_over_saturation"] = round(
            report["highest_rate_held"] / report["saturation_rps"], 3
        )
    from bench.inprocess import InProcessCascade, measure

    cascade = InProcessCascade(args.artifacts, args.data_dir)
    sample = users[: args.in_process_requests]
    measure(cascade, sample[:50])  # warm-up
    report["in_process"] = _percentiles(np.array(measure(cascade, sample)))
    one_at_a_time = report["closed_loop"][0]
    report["overhead_ratio_p50"] = round(
        one_at_a_time["p50_ms"] / report["in_process"]["p50_ms"], 2
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report["load_average"]["end"] = round(os.getloadavg()[0], 2)
    (args.out / "load.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "load.png")
    print(
        f"highest open-loop rate held (p99 < {P99_LIMIT_MS:.0f} ms, no errors): "
        f"{report['highest_rate_held']} req/s; closed-loop saturation "
        f"{report['saturation_rps']} req/s; held / saturation {report.get('held_over_saturation')}"
    )
    print(
        f"in-process p50 {report['in_process']['p50_ms']} ms vs one-at-a-time over gRPC "
        f"p50 {one_at_a_time['p50_ms']} ms: overhead x{report['overhead_ratio_p50']}"
    )
    cpu = one_at_a_time["cpu_ms_per_request"]
    print(
        "CPU per request, one at a time: "
        + ", ".join(f"{name} {ms} ms" for name, ms in cpu.items())
        + f"; total {sum(cpu.values()):.2f} ms"
    )
    print(f"saved {args.out}/load.json, load.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
