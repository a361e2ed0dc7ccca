"""Admission beside a CPU-bound neighbour: the funnel shrinks for the gateway's own queueing, not
for latency that comes from another process.

    python -m bench.admission_neighbour --out results/cascade [--rate 16] [--duration 30]

One stack (admission on), three cases, in one run so they share the machine's state:
- idle: one client asking one request at a time at --rate (far below saturation);
- neighbour: the same client while --neighbours processes (one per core by default) burn CPU as a
  training job does (numpy matrix products), at the stack's own priority;
- overload: 2x the closed-loop saturation rate (measured first on a stack with admission off, as
  `make bench-overload` does) from sender processes, after a 0.5x reference run for the p99 ratio.
Reported per case: answers, degraded share (a `funnel` stage: shrunk), refusals, p50 / p99; for
the overload case goodput / saturation and p99 / reference beside the committed
results/cascade/overload.json's 2x row. The machine's load average is recorded at the start and
end (the machine is shared: compare the cases of one run, not absolute figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np

from app import stack
from bench.load import closed_loop
from bench.overload import open_loop, saturation, summarize
from cascade.v1 import gateway_pb2, gateway_pb2_grpc

# A training job's shape: dense matrix products on one core each, for as long as it is let run.
NEIGHBOUR = """
import numpy as np
a = np.random.default_rng(0).random((256, 256))
print("running", flush=True)  # the bench starts its requests once every neighbour says so
while True:
    a = np.tanh(a @ a.T / 256.0)
"""


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def one_at_a_time(target: str, users: np.ndarray, rate: float, seconds: float, timeout_s: float):
    """One client, one request at a time, paced at `rate` (sooner when it falls behind)."""
    answers = []
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        due = time.perf_counter()
        end = due + seconds
        for n in range(10**9):
            now = time.perf_counter()
            if now >= end:
                break
            time.sleep(max(0.0, due - now))
            due += 1.0 / rate
            request = gateway_pb2.RecommendRequest(user_id=int(users[n % len(users)]), count=10)
            sent = time.perf_counter()
            try:
                page = stub.Recommend(request, timeout=timeout_s)
                code, stages = "OK", list(page.degraded_stages)
            except grpc.RpcError as error:
                code, stages = error.code().name, []
            answers.append((code, 1e3 * (time.perf_counter() - sent), stages))
    ok = [latency for code, latency, _ in answers if code == "OK"]
    shrunk = sum("funnel" in stages for _, _, stages in answers)
    return {
        "answers": len(answers),
        "rate_rps": round(len(answers) / seconds, 1),
        "degraded": sum(bool(stages) for _, _, stages in answers),
        "shrunk_funnel": shrunk,
        "degraded_share": round(shrunk / max(len(answers), 1), 4),
        "refused": sum(code == "RESOURCE_EXHAUSTED" for code, _, _ in answers),
        "errors": sum(code not in ("OK", "RESOURCE_EXHAUSTED") for code, _, _ in answers),
        "p50_ms": _p(ok, 50),
        "p99_ms": _p(ok, 99),
    }


def with_neighbours(count: int, run):
    """`run()` while `count` CPU-bound processes (one thread each) run beside it."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    neighbours = [
        subprocess.Popen(
            [sys.executable, "-c", NEIGHBOUR], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    try:
        for process in neighbours:  # each in its loop before the first request
            if process.stdout is None or process.stdout.readline() != "running\n":
                raise RuntimeError(f"a neighbour exited with {process.wait()} before running")
        return run()
    finally:
        for process in neighbours:
            process.kill()
        for process in neighbours:
            process.wait()


def committed_overload(path: Path) -> dict | None:
    """The committed overload run's 2x row (admission on) and its reference p99."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    row = next((r for r in report.get("overload", []) if r["multiple"] == 2.0), None)
    if row is None:
        return None
    keys = ("goodput_over_saturation", "admitted_p99_ms", "p99_over_reference", "refused")
    return {k: row.get(k) for k in keys} | {
        "requests": row["requests"],
        "refused_share": round(row["refused"] / row["requests"], 3),
        "shrunk_share": round(row["shrunk_answers"] / row["requests"], 3),
        "saturation_rps": report.get("saturation_rps"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/admission-neighbour"))
    parser.add_argument("--rate", type=float, default=16.0, help="the lone client's rate, req/s")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--neighbours", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--closed-duration", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=8, help="closed-loop workers")
    parser.add_argument("--timeout", type=float, default=1.0, help="client deadline, seconds")
    parser.add_argument("--sender-processes", type=int, default=2)
    parser.add_argument(
        "--committed",
        type=Path,
        default=Path("results/cascade/overload.json"),
        help="the overload run to compare the 2x case with",
    )
    parser.add_argument("--out", type=Path, default=Path("data/run/cascade"))
    args = parser.parse_args(argv)
    from cascade.data import load_dataset

    users = np.random.default_rng(0).permutation(
        load_dataset(args.dataset, args.data_dir).users["user_id"]
    )
    where = {"artifacts": args.artifacts, "data_dir": args.data_dir, "dataset": args.dataset}
    where |= {"bundle": args.bundle, "train": args.bundle == "current"}
    report: dict = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "load_average": {"start": round(os.getloadavg()[0], 2)},
        "cpus": os.cpu_count(),
    }
    closed = SimpleNamespace(
        workers=args.workers, closed_duration=args.closed_duration, timeout=args.timeout
    )
    off = {"CASCADE_GATEWAY_ADMISSION_ENABLED": "false"}
    with stack.running_stack(args.run_dir, extra_env=off, **where) as running:
        report["saturation"] = saturation(running, users, closed)
        print("saturation:", json.dumps(report["saturation"]), flush=True)
    rate_s = report["saturation"]["goodput_rps"]
    with stack.running_stack(args.run_dir, **where) as running:
        target = running.address("gateway")
        asyncio.run(closed_loop(target, users[:50], 2, 3.0, args.timeout))  # warm-up
        lone = (target, users, args.rate, args.duration, args.timeout)
        report["idle"] = one_at_a_time(*lone)
        report["load_average"]["idle_end"] = round(os.getloadavg()[0], 2)
        print("idle:", json.dumps(report["idle"]), flush=True)
        report["neighbour"] = with_neighbours(args.neighbours, lambda: one_at_a_time(*lone))
        report["load_average"]["neighbour_end"] = round(os.getloadavg()[0], 2)
        print("neighbour:", json.dumps(report["neighbour"]), flush=True)
        # with_neighbours returns once it reaped them: their CPU is back for the next case.
        answers, seconds = open_loop(
            target, users, 0.5 * rate_s, args.duration / 2, args.timeout, args.sender_processes
        )
        reference = summarize(answers, seconds, rate_s)
        report["reference"] = {"multiple": 0.5, "rate": round(0.5 * rate_s, 1)} | reference
        print("reference:", json.dumps(report["reference"]), flush=True)
        answers, seconds = open_loop(
            target, users, 2.0 * rate_s, args.duration, args.timeout, args.sender_processes
        )
        row = {"multiple": 2.0, "rate": round(2.0 * rate_s, 1)} | summarize(
            answers, seconds, rate_s
        )
        if reference["admitted_p99_ms"] and row["admitted_p99_ms"]:
            row["p99_over_reference"] = round(
                row["admitted_p99_ms"] / reference["admitted_p99_ms"], 2
            )
        row["refused_share"] = round(row["refused"] / max(row["requests"], 1), 3)
        row["shrunk_share"] = round(row["shrunk_answers"] / max(row["requests"], 1), 3)
        report["overload"] = row
        print("overload:", json.dumps(row), flush=True)
    report["load_average"]["end"] = round(os.getloadavg()[0], 2)
    report["committed_overload_2x"] = committed_overload(args.committed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "admission_neighbour.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "admission_neighbour.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"saved {args.out}/admission_neighbour.json, admission_neighbour.md")
    return 0


def to_markdown(report: dict) -> str:
    load = report["load_average"]
    settings = report["settings"]
    lines = [
        "# Admission beside a CPU-bound neighbour",
        "",
        f"`python -m bench.admission_neighbour` on a shared machine ({report['cpus']} cores; "
        f"1-minute load average {load['start']} at the start, {load['idle_end']} after the idle "
        f"case, {load['neighbour_end']} after the neighbour case, {load['end']} at the end: other "
        "work ran beside it, so compare the cases of this run with each other).",
        "",
        f"- One client, one request at a time at {settings['rate']} req/s for "
        f"{settings['duration']} s; the neighbour: {settings['neighbours']} processes of numpy "
        "matrix products (one thread each) at the stack's own priority.",
        f"- Saturation (closed loop, {settings['workers']} workers, admission off): "
        f"**{report['saturation']['goodput_rps']} req/s**, p99 {report['saturation']['p99_ms']} ms",
        "",
        "| case | answers | degraded (funnel) | degraded share | refused | errors | p50 ms | "
        "p99 ms | p99 / idle p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    idle_p99 = report["idle"]["p99_ms"] or 0
    for case in ("idle", "neighbour"):
        row = report[case]
        ratio = round(row["p99_ms"] / idle_p99, 2) if idle_p99 and row["p99_ms"] else "-"
        lines.append(
            f"| {case} | {row['answers']} | {row['shrunk_funnel']} | {row['degraded_share']:.2%} "
            f"| {row['refused']} | {row['errors']} | {row['p50_ms']} | {row['p99_ms']} | {ratio} |"
        )
    row, then = report["overload"], report["committed_overload_2x"]
    lines += [
        "",
        f"Real overload at 2x saturation ({row['rate']} req/s for {row['seconds']} s, "
        f"{settings['sender_processes']} sender processes; reference 0.5x admitted p99 "
        f"{report['reference']['admitted_p99_ms']} ms), beside the committed "
        "`results/cascade/overload.md` 2x row (admission on):",
        "",
        "| run | requests | goodput / saturation | admitted p99 ms | p99 / reference | "
        "refused share | shrunk share |",
        "|---|---|---|---|---|---|---|",
        f"| this run | {row['requests']} | {row.get('goodput_over_saturation')} | "
        f"{row['admitted_p99_ms']} | {row.get('p99_over_reference', '-')} | "
        f"{row['refused_share']} | {row['shrunk_share']} |",
    ]
    if then:
        lines.append(
            f"| committed overload.md | {then['requests']} | {then['goodput_over_saturation']} | "
            f"{then['admitted_p99_ms']} | {then['p99_over_reference']} | "
            f"{then['refused_share']} | {then['shrunk_share']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
