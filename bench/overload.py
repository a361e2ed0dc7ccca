"""Overload: the stack offered 1.5x, 2x and 4x its closed-loop saturation rate, and the split's tax.

One stack, one run, ratios measured side by side (absolute rates depend on the machine and on what
else it runs). Steps: closed-loop saturation (goodput S, CPU per request summed over the service
processes), the held rate (the highest fixed rate, as a fraction of S, answered with p99 < 50 ms,
no errors and no shortfall, at full quality), the same models in this process (CPU per request:
the split tax is the ratio), an open loop at 0.5 S (the reference p99), then each overload
multiple for --duration seconds: goodput / S, p99 of admitted answers vs the reference, refusal
latency p99, DEADLINE_EXCEEDED seen by the client, shrunk-funnel share. Optionally the same 2x run
with admission control off, and py-spy profiles of every process under load.

    python -m bench.overload --out results/cascade [--duration 60] [--multiples 1.5 2 4]
        [--compare-off] [--profile-seconds 20] [--repeats 3] [--only-tax]

Every fixed rate is sent by --sender-processes processes of their own (bench/sender.py), timed
from each request's due time; their own lag is a column. A light probe client (its own process,
one call at a time) runs beside each overload rate: its refusal latency is the server's, without
the load generator's own backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from app import stack
from bench import sender
from bench.load import P99_LIMIT_MS, closed_loop, cpu_seconds
from cascade.v1 import gateway_pb2, gateway_pb2_grpc


@dataclass
class Answer:
    latency_ms: float  # from the time the request was due (a backlog counts)
    code: str
    sent_ms: float  # from the time it was actually sent (what the server answered in)
    shrunk: bool = False
    degraded: bool = False
    nice: int = 0  # the sender's scheduling priority (bench/sender.py)


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summarize(answers: list[Answer], seconds: float, saturation: float | None) -> dict:
    ok = [a.latency_ms for a in answers if a.code == "OK"]
    refused = [a.sent_ms for a in answers if a.code == "RESOURCE_EXHAUSTED"]
    lag = [a.latency_ms - a.sent_ms for a in answers]  # the load generator's own delay
    codes: dict[str, int] = {}
    for a in answers:
        codes[a.code] = codes.get(a.code, 0) + 1
    row = {
        "requests": len(answers),
        "seconds": round(seconds, 2),
        "goodput_rps": round(len(ok) / seconds, 1),
        "admitted_p50_ms": _p(ok, 50),
        "admitted_p99_ms": _p(ok, 99),
        # The same answers timed from their actual send (without the sender's own backlog).
        "admitted_sent_p99_ms": _p([a.sent_ms for a in answers if a.code == "OK"], 99),
        "refused": len(refused),
        "refusal_p99_ms": _p(refused, 99),
        "sender_lag_p99_ms": _p(lag, 99),
        "sender_nice": max((a.nice for a in answers), default=0),
        "deadline_exceeded": codes.get("DEADLINE_EXCEEDED", 0),
        "codes": codes,
        "shrunk_answers": sum(a.shrunk for a in answers),
        "degraded_answers": sum(a.degraded for a in answers),
    }
    if saturation:
        row["goodput_over_saturation"] = round(row["goodput_rps"] / saturation, 3)
    return row


def probe(target: str, rate: float, seconds: float, timeout_s: float) -> dict:
    """A second, light client in its own process: one call at a time at `rate`, blocking stub,
    at the senders' priority. Its refusal latency is the server's answer plus the network,
    without the load generator's own event-loop backlog."""
    sender.raise_priority()
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(target))
    refused, admitted = [], []
    end = time.perf_counter() + seconds
    due = time.perf_counter()
    user = 1
    while due < end:
        time.sleep(max(0.0, due - time.perf_counter()))
        due += 1.0 / rate
        request = gateway_pb2.RecommendRequest(user_id=user, count=10)
        user = user % 900 + 1
        sent = time.perf_counter()
        try:
            stub.Recommend(request, timeout=timeout_s)
            admitted.append(1e3 * (time.perf_counter() - sent))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused.append(1e3 * (time.perf_counter() - sent))
    return {
        "probe_rate": rate,
        "probe_refused": len(refused),
        "probe_refusal_p50_ms": _p(refused, 50),
        "probe_refusal_p99_ms": _p(refused, 99),
        "probe_admitted": len(admitted),
        "probe_admitted_p99_ms": _p(admitted, 99),
    }


def start_probe(target: str, rate: float, seconds: float, timeout_s: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.overload", "--probe", target, "--probe-rate", str(rate)]
    command += ["--duration", str(seconds), "--timeout", str(timeout_s)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def open_loop(
    target: str, users: np.ndarray, rate: float, seconds: float, timeout_s: float, processes=2
) -> tuple[list[Answer], float]:
    """A fixed rate from `processes` sender processes of their own (bench/sender.py)."""
    records, took = sender.fixed_rate(target, users, rate, seconds, timeout_s, False, processes)
    answers = [
        Answer(r["latency_ms"], r["code"], r["sent_ms"], r["shrunk"], r["degraded"], r["nice"])
        for r in records
    ]
    return answers, took


REFUSAL_BUCKETS = "cascade_gateway_refusal_latency_seconds_bucket{"


def refusal_buckets(running: stack.Stack) -> dict[float, float]:
    """The gateway's refusal-latency histogram (upper bound in s -> cumulative count)."""
    port = next(s.metrics_port for s in running.services if s.name == "gateway")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(REFUSAL_BUCKETS):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound of the bucket that holds the 99th percentile of what came in between."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return None
    return next(1e3 * b for b, n in counts.items() if n >= 0.99 * total)


def in_process_cpu_ms(cascade, users: np.ndarray) -> dict:
    """CPU and wall time per request of the same models as plain calls in this process."""
    for user in users[:50].tolist():  # warm-up
        cascade.recommend(user)
    cascade.cpu = dict.fromkeys(cascade.cpu, 0.0)
    cpu, wall = time.process_time(), time.perf_counter()
    for user in users.tolist():
        cascade.recommend(user)
    return {
        "requests": len(users),
        "cpu_ms_per_request": round(1e3 * (time.process_time() - cpu) / len(users), 3),
        "wall_ms_per_request": round(1e3 * (time.perf_counter() - wall) / len(users), 3),
        # Each stage's share of it: the yardstick beside each stage process's CPU per request.
        "stage_cpu_ms_per_request": {
            stage: round(1e3 * spent / len(users), 3) for stage, spent in cascade.cpu.items()
        },
    }


def split_tax(running: stack.Stack, users: np.ndarray, args) -> dict:
    """`--repeats` times: the closed loop at saturation, then at once (the stack idle) the same
    models in this process. Each repeat's ratio pairs two measurements taken seconds apart, so a
    neighbour's load moves both; the report keeps every repeat and their medians."""
    from bench.inprocess import InProcessCascade

    cascade = InProcessCascade(args.artifacts, args.data_dir, args.bundle)
    repeats = []
    for _ in range(args.repeats):
        closed = saturation(running, users, args)
        inside = in_process_cpu_ms(cascade, users[: args.in_process_requests])
        cpu = closed["cpu_ms_per_request"]
        stack_cpu = sum(v for k, v in cpu.items() if k != "load generator")
        closed |= {
            "in_process": inside,
            "stack_cpu_ms_per_request": round(stack_cpu, 3),
            "split_tax": round(stack_cpu / inside["cpu_ms_per_request"], 3),
            "gateway_cpu_share": round(cpu["gateway"] / stack_cpu, 3),
        }
        print("split tax:", json.dumps(closed), flush=True)
        repeats.append(closed)

    def median(values) -> float:
        return round(float(np.median(values)), 3)

    names = repeats[0]["cpu_ms_per_request"]
    return {
        "saturation_rps": median([r["goodput_rps"] for r in repeats]),
        "closed_loop": {
            "workers": args.workers,
            "p99_ms": median([r["p99_ms"] for r in repeats]),
            "cpu_ms_per_request": {
                n: median([r["cpu_ms_per_request"][n] for r in repeats]) for n in names
            },
        },
        "in_process": {
            "cpu_ms_per_request": median([r["in_process"]["cpu_ms_per_request"] for r in repeats]),
            "stage_cpu_ms_per_request": {
                stage: median([r["in_process"]["stage_cpu_ms_per_request"][stage] for r in repeats])
                for stage in repeats[0]["in_process"]["stage_cpu_ms_per_request"]
            },
        },
        "split_tax": median([r["split_tax"] for r in repeats]),
        "gateway_cpu_share": median([r["gateway_cpu_share"] for r in repeats]),
        "tax_repeats": repeats,
    }


def profile(pid: int, seconds: float, raw: Path) -> dict:
    """py-spy samples of one process's threads while on a CPU (collapsed stacks in `raw`) ->
    the frames with the most own samples and with the most samples under them."""
    binary = Path(sys.executable).with_name("py-spy")  # the dev set pins it into the venv
    command = [str(binary) if binary.exists() else "py-spy", "record", "--pid", str(pid)]
    # Idle threads (blocked on a lock or a socket) are not sampled: what is left is where the
    # process's CPU goes, model code that released the GIL included (under its Python caller).
    command += ["--duration", str(int(seconds)), "--format", "raw", "--nonblocking"]
    command += ["--rate", "100", "-o", str(raw)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=seconds + 30)
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": f"py-spy failed: {getattr(error, 'stderr', b'') or error}"[:400]}
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        frames = [f for f in stack_text.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            under[frame] = under.get(frame, 0) + n

    def top(counts: dict[str, int], k: int) -> list[dict]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:k]
        return [{"frame": f, "share": round(n / max(total, 1), 4)} for f, n in ranked]

    return {"samples": total, "top_own": top(own, 25), "top_inclusive": top(under, 40)}


def profile_all(running: stack.Stack, users: np.ndarray, args) -> dict[str, dict]:
    """Every service process profiled at once under a closed loop at saturation (its own pass:
    py-spy's sampling costs CPU, kept out of the CPU-per-request figures)."""
    target = running.address("gateway")
    raw_dir = args.run_dir / "profiles"
    raw_dir.mkdir(parents=True, exist_ok=True)
    with futures.ThreadPoolExecutor(len(running.services)) as pool:
        jobs = {
            s.name: pool.submit(profile, s.pid, args.profile_seconds, raw_dir / f"{s.name}.txt")
            for s in running.services
        }
        asyncio.run(
            closed_loop(target, users, args.workers, args.profile_seconds + 2, args.timeout)
        )
        profiles = {name: job.result() for name, job in jobs.items()}
    out = args.out / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    for name, summary in profiles.items():
        (out / f"{name}.txt").write_text(profile_text(name, summary))
    return profiles


def profile_text(name: str, summary: dict) -> str:
    """A flame summary as text: the frames with the most samples under them, then by own."""
    if "error" in summary:
        return f"{name}: {summary['error']}\n"
    lines = [
        f"# {name}: py-spy, {summary['samples']} samples of threads on a CPU, closed loop at "
        "saturation (bench/overload.py --profile-seconds)",
        "",
        "## Inclusive (share of samples with the frame on the stack)",
        *(f"{100 * t['share']:5.1f}%  {t['frame']}" for t in summary["top_inclusive"]),
        "",
        "## Own (share of samples in the frame itself)",
        *(f"{100 * t['share']:5.1f}%  {t['frame']}" for t in summary["top_own"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/overload"))
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.5, 2.0, 4.0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per overload rate")
    parser.add_argument("--reference-duration", type=float, default=30.0)
    parser.add_argument("--closed-duration", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=8, help="closed-loop workers")
    parser.add_argument("--timeout", type=float, default=1.0, help="client deadline, seconds")
    parser.add_argument("--in-process-requests", type=int, default=500)
    parser.add_argument(
        "--held-fractions",
        type=float,
        nargs="+",
        default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        help="open-loop rates tried for the held rate, as fractions of the saturation rate",
    )
    parser.add_argument("--held-duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3, help="saturation + in-process pairs")
    parser.add_argument(
        "--only-tax", action="store_true", help="only the split tax repeats, into OUT/tax.json"
    )
    parser.add_argument("--compare-off", action="store_true", help="2x again, admission off")
    parser.add_argument(
        "--profile-seconds", type=float, default=0, help="py-spy every process at saturation"
    )
    parser.add_argument("--probe-rate", type=float, default=20.0, help="the light client's rate")
    parser.add_argument(
        "--sender-processes", type=int, default=2, help="open-loop sender processes"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # run as the probe against this target
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.probe_rate, args.duration, args.timeout)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    from cascade.data import load_dataset

    users = np.random.default_rng(0).permutation(
        load_dataset(args.dataset, args.data_dir).users["user_id"]
    )
    where = {"artifacts": args.artifacts, "data_dir": args.data_dir, "dataset": args.dataset}
    where |= {"bundle": args.bundle, "train": args.bundle == "current"}
    report: dict = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine_note": (
            "2 shared cores: other work ran on the machine at the same time; compare ratios "
            "measured in this run, not absolute rates"
        ),
        # The machine's 1-minute load average (runnable processes, 2 cores) at the start.
        "load_average": {"start": round(os.getloadavg()[0], 2)},
    }
    # Capacity at full quality: admission (and so the quality factor) off.
    env = {"CASCADE_GATEWAY_ADMISSION_ENABLED": "false"}
    with stack.running_stack(args.run_dir, extra_env=env, **where) as running:
        report |= split_tax(running, users, args)
        if args.profile_seconds:
            report["profiles"] = profile_all(running, users, args)
        if args.only_tax:
            (args.out / "tax.json").write_text(json.dumps(report, indent=2))
            print(f"split tax {report['split_tax']}x, gateway share {report['gateway_cpu_share']}")
            return 0
        report |= held_rate(running, users, args, report["saturation_rps"])
        if args.compare_off:
            rate = 2.0 * report["saturation_rps"]
            target = running.address("gateway")
            answers, seconds = open_loop(
                target, users, rate, args.duration, args.timeout, args.sender_processes
            )
            row = {"multiple": 2.0, "rate": round(rate, 1)}
            row |= summarize(answers, seconds, report["saturation_rps"])
            print("admission off:", json.dumps(row), flush=True)
            report["admission_off"] = [row]
    with stack.running_stack(args.run_dir, **where) as running:
        report |= overload(running, users, args, report["saturation_rps"])
    report["load_average"]["end"] = round(os.getloadavg()[0], 2)
    (args.out / "overload.json").write_text(json.dumps(report, indent=2))
    (args.out / "overload.md").write_text(to_markdown(report))
    plot(report, args.out / "overload.png")
    print(to_markdown(report))
    print(f"saved {args.out}/overload.json, overload.md, overload.png")
    return 0


def saturation(running: stack.Stack, users: np.ndarray, args) -> dict:
    """Closed-loop goodput and CPU per request of each process over the same run."""
    target = running.address("gateway")
    asyncio.run(closed_loop(target, users[:50], 4, 3.0, args.timeout))  # warm-up
    before = cpu_seconds(running)
    samples, seconds = asyncio.run(
        closed_loop(target, users, args.workers, args.closed_duration, args.timeout)
    )
    spent = {name: cpu - before[name] for name, cpu in cpu_seconds(running).items()}
    ok = [s for s in samples if s.code == "OK"]
    rate = len(ok) / seconds
    closed = {
        "workers": args.workers,
        "seconds": round(seconds, 2),
        "goodput_rps": round(rate, 1),
        "errors": len(samples) - len(ok),
        "p99_ms": round(float(np.percentile([s.latency_ms for s in ok], 99)), 2),
        "cpu_ms_per_request": {n: round(1e3 * c / max(len(ok), 1), 3) for n, c in spent.items()},
    }
    return closed


def held_rate(running: stack.Stack, users: np.ndarray, args, saturation: float) -> dict:
    """The highest fixed rate held: p99 < 50 ms, no errors, at least 95% of the offered rate
    answered. Rates go up as fractions of the saturation rate; two misses in a row end the scan
    (one miss can be a noisy neighbour)."""
    target = running.address("gateway")
    tried, misses = [], 0
    for fraction in sorted(args.held_fractions):
        rate = fraction * saturation
        answers, seconds = open_loop(
            target, users, rate, args.held_duration, args.timeout, args.sender_processes
        )
        row = {"fraction": fraction, "rate": round(rate, 1)} | summarize(answers, seconds, None)
        row["held"] = (
            row["admitted_p99_ms"] is not None
            and row["admitted_p99_ms"] < P99_LIMIT_MS
            and row["requests"] == row["codes"].get("OK", 0)
            and row["goodput_rps"] >= 0.95 * rate
        )
        print("held rate:", json.dumps(row), flush=True)
        tried.append(row)
        misses = 0 if row["held"] else misses + 1
        if misses == 2:
            break
    held = max((r["rate"] for r in tried if r["held"]), default=None)
    return {
        "held_rate_rps": held,
        "held_over_saturation": round(held / saturation, 3) if held else None,
        "held_scan": tried,
    }


def overload(running: stack.Stack, users: np.ndarray, args, saturation: float) -> dict:
    """With admission on: the 0.5x reference, then each multiple of the saturation rate."""
    target = running.address("gateway")
    asyncio.run(closed_loop(target, users[:50], 2, 3.0, args.timeout))  # warm-up
    result: dict = {}
    rate = 0.5 * saturation
    answers, seconds = open_loop(
        target, users, rate, args.reference_duration, args.timeout, args.sender_processes
    )
    reference = {"multiple": 0.5, "rate": round(rate, 1)} | summarize(answers, seconds, saturation)
    print("reference:", json.dumps(reference), flush=True)
    result["reference"] = reference
    result["overload"] = []
    for multiple in args.multiples:
        rate = multiple * saturation
        before = refusal_buckets(running)
        prober = start_probe(target, args.probe_rate, args.duration - 2, args.timeout)
        answers, seconds = open_loop(
            target, users, rate, args.duration, args.timeout, args.sender_processes
        )
        row = {"multiple": multiple, "rate": round(rate, 1)}
        row |= summarize(answers, seconds, saturation)
        row["server_refusal_p99_ms_at_most"] = bucket_p99_ms(before, refusal_buckets(running))
        row |= json.loads(prober.communicate(timeout=60)[0])
        if reference["admitted_p99_ms"] and row["admitted_p99_ms"]:
            row["p99_over_reference"] = round(
                row["admitted_p99_ms"] / reference["admitted_p99_ms"], 2
            )
        print("overload:", json.dumps(row), flush=True)
        result["overload"].append(row)
    return result


def to_markdown(report: dict) -> str:
    sat = report["saturation_rps"]
    ref = report["reference"]
    cpu = report["closed_loop"]["cpu_ms_per_request"]
    repeats = report["tax_repeats"]
    stack_cpu = sum(v for k, v in cpu.items() if k != "load generator")
    lines = [
        "# Overload: offered multiples of the closed-loop saturation rate",
        "",
        f"{report['machine_note']}; 1-minute load average {report['load_average']['start']} at "
        f"the start, {report['load_average']['end']} at the end.",
        "",
        f"- Saturation (closed loop, {report['closed_loop']['workers']} workers): **{sat} req/s**"
        f", p99 {report['closed_loop']['p99_ms']} ms",
        f"- Reference (0.5x = {ref['rate']} req/s, admission on): admitted p99 "
        f"**{ref['admitted_p99_ms']} ms**",
        "- Saturation is measured with admission off (full funnel, full quality); refusal "
        "latency counts from the moment the request was sent, the sender's own lag is its column",
        f"- Fixed rates are sent by {report['settings']['sender_processes']} sender processes "
        f"of their own (bench/sender.py) at scheduling priority nice "
        f"{report['reference'].get('sender_nice', 0)} (standing in for clients on other "
        "machines); latency counts from each request's due time",
        f"- Split tax (CPU per request summed over the service processes at saturation / the same "
        f"models in one process, measured right after; median of {len(repeats)} repeats): "
        f"**{report['split_tax']}x** (repeats: {', '.join(str(r['split_tax']) for r in repeats)}; "
        f"medians {stack_cpu:.2f} ms vs {report['in_process']['cpu_ms_per_request']} ms)",
        f"- Gateway CPU share of a request: **{100 * report['gateway_cpu_share']:.1f}%** (repeats: "
        f"{', '.join(str(r['gateway_cpu_share']) for r in repeats)})",
        f"- Held rate (highest fixed rate with p99 < {P99_LIMIT_MS:.0f} ms, no errors, full "
        f"funnel): **{report['held_rate_rps']} req/s = {report['held_over_saturation']} x "
        f"saturation** (tried: "
        + ", ".join(
            f"{r['fraction']}x p99 {r['admitted_p99_ms']} ms, sender lag p99 "
            f"{r['sender_lag_p99_ms']} ms{'' if r['held'] else ' (missed)'}"
            for r in report["held_scan"]
        )
        + ")",
        f"- CPU ms per request at saturation (medians): {json.dumps(cpu)}",
        "",
        *stage_table(report),
        "",
        "| offered | rate req/s | goodput req/s | goodput / saturation | admitted p50 ms | "
        "admitted p99 ms | p99 / reference | refused | refusal p99 ms | DEADLINE_EXCEEDED | "
        "shrunk answers | sender lag p99 ms | gateway's refusal p99 ms (bucket) | "
        "probe refusal p50 / p99 ms |",
        "|---" * 14 + "|",
    ]
    rows = [(r, "admission on") for r in report["overload"]]
    rows += [(r, "admission off") for r in report.get("admission_off", [])]
    for row, mode in rows:
        lines.append(
            f"| {row['multiple']}x ({mode}) | {row['rate']} | {row['goodput_rps']} | "
            f"{row.get('goodput_over_saturation')} | {row['admitted_p50_ms']} | "
            f"{row['admitted_p99_ms']} | {row.get('p99_over_reference', '-')} | {row['refused']} | "
            f"{row['refusal_p99_ms']} | {row['deadline_exceeded']} | {row['shrunk_answers']} | "
            f"{row['sender_lag_p99_ms']} | {row.get('server_refusal_p99_ms_at_most', '-')} | "
            f"{row.get('probe_refusal_p50_ms', '-')} / {row.get('probe_refusal_p99_ms', '-')} |"
        )
    if report.get("profiles"):
        lines += ["", "Flame summaries of each process at saturation: `profiles/<process>.txt`."]
    return "\n".join(lines) + "\n"


def stage_table(report: dict) -> list[str]:
    """Each process's CPU per request at saturation beside the same stage's code in one process."""
    cpu = report["closed_loop"]["cpu_ms_per_request"]
    inside = report["in_process"].get("stage_cpu_ms_per_request", {})
    lines = [
        "| process | CPU ms per request, own process | same code in one process | ratio |",
        "|---|---|---|---|",
    ]
    for name, ms in cpu.items():
        if name == "load generator":
            continue
        alone = inside.get(name)
        ratio = f"{ms / alone:.2f}" if alone else "-"
        lines.append(f"| {name} | {ms} | {alone if alone is not None else '-'} | {ratio} |")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    rows = [report["reference"], *report["overload"]]
    offered = [r["rate"] for r in rows]
    left.plot(offered, [r["goodput_rps"] for r in rows], marker="o", label="goodput, admission on")
    for row in report.get("admission_off", []):
        left.scatter(
            [row["rate"]], [row["goodput_rps"]], color="red", label="goodput, admission off"
        )
    left.plot(offered, offered, linestyle=":", color="grey", label="offered")
    left.axhline(report["saturation_rps"], color="grey", linestyle="--", label="saturation")
    left.set(xlabel="offered rate (req/s)", ylabel="req/s", title="offered vs goodput")
    left.legend()
    right.plot(offered, [r["admitted_p99_ms"] for r in rows], marker="o", label="admitted p99")
    right.plot(offered, [r["admitted_p50_ms"] for r in rows], marker="o", label="admitted p50")
    right.plot(
        offered, [r["refusal_p99_ms"] or np.nan for r in rows], marker="x", label="refusal p99"
    )
    for row in report.get("admission_off", []):
        right.scatter(
            [row["rate"]], [row["admitted_p99_ms"]], color="red", label="p99, admission off"
        )
    right.set(xlabel="offered rate (req/s)", ylabel="ms", yscale="log", title="latency")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
