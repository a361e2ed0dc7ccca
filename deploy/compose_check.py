"""Checks a running compose stack from the host (deploy/compose_smoke.sh runs it): a call
without the API token is refused (UNAUTHENTICATED), Recommend with the token answers through the
gateway, no answer degraded, every stage replica answered its warm-up before SERVING, every
replica of a replicated stage served calls, and Prometheus scrapes every target in its config
with `up` == 1.

    CASCADE_GATEWAY_API_TOKEN=... python -m deploy.compose_check \
        --config .cascade/compose/prometheus/prometheus-compose.yml

`--no-prometheus` checks the gateway and the replicas alone (tests/deploy/test_compose_local.py
runs that against the local stack started with docker-compose.yml's settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import CascadeClient


def scrape_targets(config: Mapping) -> dict[str, list[str]]:
    """The static targets of each stage in a Prometheus config: {"rank": ["127.0.0.1:9153", ...]}
    (target groups without a `stage` label, e.g. Prometheus itself, are under their job name)."""
    stages: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            name = group.get("labels", {}).get("stage", job["job_name"])
            stages.setdefault(name, []).extend(group["targets"])
    return stages


def served_calls(metrics_text: str) -> float:
    """Handled RPCs in a /metrics page, health checks excluded (cascade_rpc_requests_total)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "cascade_rpc_requests_total"
        and "Health" not in sample.labels.get("rpc", "")
    )


def warm_ups(metrics_text: str) -> float:
    """Synthetic requests a stage answered before it reported SERVING (cascade/warmup.py)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "cascade_warmup_requests_total" and sample.labels["outcome"] == "ok"
    )


def _get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # loopback only
        return response.read().decode()


def query(prometheus: str, promql: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    reply = json.loads(_get(url))
    if reply.get("status") != "success":
        raise RuntimeError(f"Prometheus query {promql!r} failed: {reply}")
    return reply["data"]["result"]


TOKEN_ENV = "CASCADE_GATEWAY_API_TOKEN"  # what docker-compose.yml hands the gateway
WARMED = ("recall", "prerank", "rank", "rerank")  # the stages with models and indexes to warm


def spread_users(count: int, n_users: int) -> list[int]:
    """`count` user ids spread over 1..n_users (196, 203, ... on ml-100k's 943 users)."""
    return [1 + (195 + 7 * i) % n_users for i in range(count)]


def refused_without_token(gateway: str) -> str | None:
    """A problem when a Recommend without the API token is not refused as UNAUTHENTICATED."""
    with CascadeClient(gateway, timeout_s=2.0) as client:
        try:
            client.recommend(1, count=1)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                print(f"without the token: UNAUTHENTICATED ({error.details()})")
                return None
            return f"a call without the token got {error.code().name}, not UNAUTHENTICATED"
    return "a call without the token was answered"


def drive(
    gateway: str, users: Sequence[int], count: int, token: str | None = None
) -> tuple[int, int, int]:
    """Recommend for each user; returns (answered, degraded, failed), printing each failure."""
    answered = degraded = failed = 0
    with CascadeClient(gateway, timeout_s=2.0, token=token) as client:
        for user in users:
            try:
                page = client.recommend(user, count=count)
            except grpc.RpcError as error:
                failed += 1
                print(f"  user {user}: {error.code().name} {error.details()}")
                continue
            answered += 1
            if page.degraded:
                degraded += 1
                print(f"  user {user}: degraded {list(page.degraded_stages)}")
    return answered, degraded, failed


def wait_up(prometheus: str, expected: Sequence[str], timeout_s: float) -> dict[str, float]:
    """`up` per scraped instance once every expected target has been scraped (or the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        up = {r["metric"]["instance"]: float(r["value"][1]) for r in query(prometheus, "up")}
        if all(up.get(t) == 1.0 for t in expected) or time.monotonic() > deadline:
            return up
        time.sleep(1.0)


CALLS = 'sum by (stage) (cascade_rpc_requests_total{rpc!~"grpc[.]health.*"})'


def wait_calls(
    prometheus: str, stages: set[str], at_least: float, timeout_s: float
) -> dict[str, float]:
    """Calls per stage in Prometheus once every stage shows `at_least` (the traffic scraped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        calls = {
            r["metric"].get("stage", "?"): float(r["value"][1]) for r in query(prometheus, CALLS)
        }
        if all(calls.get(s, 0) >= at_least for s in stages) or time.monotonic() > deadline:
            return calls
        time.sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="Prometheus config in use")
    parser.add_argument("--gateway", default="127.0.0.1:50050")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--requests", type=int, default=60, help="Recommend calls to send")
    parser.add_argument("--users", type=int, default=943, help="the dataset's user count")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for scrapes")
    parser.add_argument(
        "--no-prometheus", action="store_true", help="skip the checks that ask Prometheus"
    )
    args = parser.parse_args(argv)
    targets = scrape_targets(yaml.safe_load(args.config.read_text()))
    problems: list[str] = []
    token = os.environ.get(TOKEN_ENV)
    if not token:
        print(f"FAILED: no {TOKEN_ENV} in the environment (the gateway's API token)")
        return 1

    if problem := refused_without_token(args.gateway):
        problems.append(problem)
    users = spread_users(args.requests, args.users)
    answered, degraded, failed = drive(args.gateway, users, count=10, token=token)
    print(
        f"recommend: {len(users)} sent, {answered} answered, {degraded} degraded, {failed} failed"
    )
    if answered != len(users) or degraded:
        problems.append("some Recommend calls failed or degraded")

    warmed = {
        target: warm_ups(_get(f"http://{target}/metrics"))
        for stage in WARMED
        for target in targets.get(stage, [])
    }
    print("warm-up requests answered before SERVING: " + ", ".join(
        f"{target} {count:.0f}" for target, count in warmed.items()
    ))  # fmt: skip
    if not warmed or min(warmed.values()) == 0:
        problems.append("a stage served without a warm-up")

    for stage, endpoints in targets.items():
        if len(endpoints) < 2:
            continue
        calls = {e: served_calls(_get(f"http://{e}/metrics")) for e in endpoints}
        print(
            f"{stage} replicas, calls served: "
            + ", ".join(f"{e} {c:.0f}" for e, c in calls.items())
        )
        if min(calls.values()) == 0:
            problems.append(f"a {stage} replica served no calls")

    if args.no_prometheus:
        return report(problems)
    expected = [t for endpoints in targets.values() for t in endpoints]
    up = wait_up(args.prometheus, expected, args.timeout)
    print(f"prometheus up (query `up` on {args.prometheus}):")
    for stage, endpoints in targets.items():
        for target in endpoints:
            print(f"  {stage:<10} {target:<16} up={up.get(target, 'missing')}")
    if any(up.get(t) != 1.0 for t in expected):
        problems.append("a scrape target is not up")
    stages = {s for s in targets if s != "prometheus"}
    per_stage = wait_calls(args.prometheus, stages, answered, args.timeout)
    print(f"prometheus {CALLS}:")
    for stage, calls in sorted(per_stage.items()):
        print(f"  {stage:<10} {calls:.0f}")
    if any(per_stage.get(s, 0) < answered for s in stages):
        problems.append(f"a stage shows fewer than the {answered} answered calls in Prometheus")

    return report(problems)


def report(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"FAILED: {problem}")
    print("compose check: " + ("FAILED" if problems else "OK"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
