"""Fault case: two rank replicas, one paused with SIGSTOP for 10 s under a fixed request rate.

    python -m bench.faults --case replica-pause --out results/security --rate 20

Three gateways in turn on the same stack layout (a fresh stack each), differing only in how they
treat rank's replicas:

    round robin, no ejection     what the gateway did before per-replica health: every other
                                 call goes to the paused replica and waits out rank's budget
    least in flight, no ejection calls go to the replica with fewer calls in flight
    least in flight + ejection   the default: a replica failing `breaker_failures` times in a row
                                 is ejected and health-probed back (gateway/replicas.py)

Timeline per run, from the start of the load: 5 s warm-up (not reported), 5 s before, SIGSTOP at
10 s, SIGCONT at 20 s, 10 s after. Reported per window (before, pause, after): sent, answered,
degraded (rank fell back), failed, p50 and p99 end to end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app import stack
from bench.answers import Answer, ask_traced, percentiles
from bench.load import fixed_rate
from bench.replicas import scrape
from cascade.server import free_port

WARM_S, PAUSE_AT_S, PAUSE_S, AFTER_S = 5.0, 10.0, 10.0, 10.0
VARIANTS = (  # (name, gateway environment)
    ("round robin, no ejection", {"REPLICA_PICK": "round_robin", "BREAKER_FAILURES": "0"}),
    ("least in flight, no ejection", {"REPLICA_PICK": "least_in_flight", "BREAKER_FAILURES": "0"}),
    ("least in flight + ejection", {"REPLICA_PICK": "least_in_flight"}),
)


def window(answers: list[Answer], start_s: float, end_s: float) -> dict:
    inside = [a for a in answers if start_s <= a.sent_s < end_s]
    ok = [a for a in inside if a.code == "OK"]
    degraded = sum("rank" in a.degraded for a in ok)
    return {
        "sent": len(inside),
        "answered": len(ok),
        "degraded": degraded,
        "degraded_pct": round(100 * degraded / len(inside), 2) if inside else float("nan"),
        "failed": len(inside) - len(ok),
        **percentiles([a.latency_ms for a in ok]),
    }


def serving_replicas(gateway: stack.Service, stage: str) -> int:
    """The replicas of `stage` the gateway counts as serving, from its own /metrics."""
    for family in text_string_to_metric_families(scrape(gateway)):
        for sample in family.samples:
            if sample.name == "cascade_gateway_replicas" and sample.labels == {
                "stage": stage,
                "state": "serving",
            }:
                return int(sample.value)
    return 0


def wait_serving_replicas(
    gateway: stack.Service, stage: str, count: int, timeout_s: float, poll_s: float = 0.1
) -> None:
    """Until the gateway serves `count` replicas of `stage`: a replica started after it is
    taken in by its health prober (gateway/replicas.py). RuntimeError when time is up."""
    deadline = time.monotonic() + timeout_s
    while (serving := serving_replicas(gateway, stage)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the gateway serves {serving} {stage} replicas after {timeout_s} s, not {count} "
                f"(its log: {gateway.log})"
            )
        time.sleep(poll_s)


def run_variant(
    name: str,
    gateway_env: dict,
    root: Path,
    data_dir: Path,
    dataset: str,
    run_dir: Path,
    users: np.ndarray,
    rate: float,
    timeout_s: float,
) -> dict:
    rank_port, second_port = free_port(), free_port()
    env = {f"CASCADE_GATEWAY_{k}": v for k, v in gateway_env.items()}
    env["CASCADE_GATEWAY_RANK_TARGET"] = f"127.0.0.1:{rank_port},127.0.0.1:{second_port}"
    ports = dict.fromkeys(stack.DEFAULT_PORTS, 0) | {"rank": rank_port}
    with stack.running_stack(
        run_dir,
        artifacts=root,
        data_dir=data_dir,
        dataset=dataset,
        train=False,
        ports=ports,
        extra_env=env,
    ) as running:
        paused = stack.add_replica(running, "rank", second_port)
        target = running.address("gateway")
        gateway = next(s for s in running.services if s.name == "gateway")
        wait_serving_replicas(gateway, "rank", 2, timeout_s=30.0)
        events: list = []
        start = time.perf_counter() + 0.5

        # The sleeps below keep the fault's schedule (pause at 10 s, resume at 20 s from the
        # start of the load): they wait for a time, not for a state.
        def pause() -> None:
            time.sleep(max(0.0, start + PAUSE_AT_S - time.perf_counter()))
            os.kill(paused.pid, signal.SIGSTOP)
            events.append(("SIGSTOP", round(time.perf_counter() - start, 3)))
            time.sleep(max(0.0, start + PAUSE_AT_S + PAUSE_S - time.perf_counter()))
            os.kill(paused.pid, signal.SIGCONT)
            events.append(("SIGCONT", round(time.perf_counter() - start, 3)))

        injector = threading.Thread(target=pause, daemon=True)
        injector.start()

        def ask(stub, user: int, due: float):
            return ask_traced(stub, user, due, start, timeout_s)

        seconds = PAUSE_AT_S + PAUSE_S + AFTER_S
        answers, _ = asyncio.run(fixed_rate(target, users, rate, seconds, ask, start))
        injector.join(timeout=PAUSE_S + 5)
        os.kill(paused.pid, signal.SIGCONT)  # whatever happened, never leave it stopped
    answers = sorted(answers, key=lambda a: a.sent_s)
    end = PAUSE_AT_S + PAUSE_S
    return {
        "variant": name,
        "gateway_env": env,
        "events": events,
        "before": window(answers, WARM_S, PAUSE_AT_S),
        "pause": window(answers, PAUSE_AT_S, end),
        "after": window(answers, end, end + AFTER_S),
    }


def markdown(report: dict) -> str:
    lines = [
        f"Two rank replicas, one SIGSTOPped for {PAUSE_S:.0f} s at {report['rate']} requests/s "
        f"(client deadline {report['client_timeout_s']} s; {report['dataset']}, bundle "
        f"{report['bundle']}; one run per variant, in turn, on a shared 2-core machine).",
        "",
        "| gateway | window | sent | degraded | degraded % | failed | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["variants"]:
        for window_name in ("before", "pause", "after"):
            w = row[window_name]
            lines.append(
                f"| {row['variant']} | {window_name} | {w['sent']} | {w['degraded']} | "
                f"{w['degraded_pct']} | {w['failed']} | {w['p50_ms']} | {w['p99_ms']} |"
            )
    return "\n".join(lines) + "\n"
