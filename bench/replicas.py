"""Replicas on one shared Redis store act as one: 2 gateways, 2 recall, 2 rank (prerank, rerank).

Every process is a real server on loopback; the gateways balance round robin over the stage
replicas and clients alternate gateways. Each of `--users` users asks gateway A, plays the top
item through A, then asks gateway B: the played item must not come back
(`played_item_shown_again`), whichever recall / rank / rerank replica served either request.
Rerank's already-shown filter is off here, so it is the shared consumed set, not the shown set,
that keeps the played item out. After the plays, both recall replicas' fresh-content counters
(scraped from their /metrics) must agree with each other and with the plays sent. The same run
on the embedded store (`memory_control`: each process its own state) shows what the shared store
fixes.

    python -m bench.replicas --out results/state     (needs a trained bundle: make demo)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app import stack
from cascade.redis_server import RedisProcess
from cascade.server import free_port
from deploy.compose_check import served_calls
from gateway.client import CascadeClient

REPLICAS = {"recall": 2, "prerank": 1, "rank": 2, "rerank": 1, "gateway": 2}


def launch(run_dir: Path, name: str, replica: int, env: dict[str, str]) -> stack.Service:
    log = run_dir / f"{name}-{replica}.log"
    port = int(env[f"CASCADE_{name.upper()}_SERVER_PORT"])
    metrics = int(env[f"CASCADE_{name.upper()}_SERVER_METRICS_PORT"])
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", stack.MODULES[name]],
            env=os.environ | env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return stack.Service(name, port, metrics, process.pid, str(log))


def start_replicas(run_dir: Path, artifacts: Path, data_dir: Path, store: str) -> stack.Stack:
    """Every replica as its own process on free ports, all on `store`; waits for health."""
    names = [n for n in REPLICAS if n != "prerank" or stack.prerank_available(artifacts)]
    ports = {(n, r): (free_port(), free_port()) for n in names for r in range(REPLICAS[n])}
    targets = {
        stage: "ipv4:" + ",".join(f"127.0.0.1:{ports[stage, r][0]}" for r in range(REPLICAS[stage]))
        for stage in stack.STAGES
        if stage in names
    }
    targets.setdefault("prerank", f"127.0.0.1:{free_port()}")  # absent: degraded
    settings = {
        "artifacts": artifacts.resolve(),
        "bundle": "current",
        "data_dir": data_dir.resolve(),
        "run_dir": run_dir.resolve(),
    }
    running = stack.Stack(run_dir, [], "current", "")
    try:
        for name in names:
            for replica in range(REPLICAS[name]):
                port, metrics = ports[name, replica]
                port_file = run_dir / f"{name}-{replica}.ports.json"
                env = stack._environment(name, port, metrics, settings, targets, port_file)
                env[f"CASCADE_{name.upper()}_STORE"] = store
                if name == "gateway":  # both gateways append to one shared log (Redis Streams)
                    env["CASCADE_GATEWAY_EVENT_LOG"] = store
                if name == "rerank":  # the consumed set, not the shown set, must do the work
                    env["CASCADE_RERANK_RERANK_RULES_FILTER_SHOWN"] = "false"
                running.services.append(launch(run_dir, name, replica, env))
                stack._save(running)
        stack.wait_healthy(running, 300.0)
    except BaseException:
        stack.down(run_dir, quiet=True)
        raise
    return running


def scrape(service: stack.Service) -> str:
    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5.0) as response:  # loopback only
        return response.read().decode()


def play_counter(service: stack.Service) -> int:
    for family in text_string_to_metric_families(scrape(service)):
        for sample in family.samples:
            if sample.name == "cascade_store_item_events" and sample.labels["event"] == "play":
                return int(sample.value)
    raise LookupError(f"{service.name} on :{service.metrics_port} exposes no store counters")


def settled_play_counters(
    recalls: list[stack.Service], before: list[int], plays: int, shared: bool, timeout_s: float
) -> list[int]:
    """The recall replicas' play counters once every accepted play has reached them: on a shared
    store each replica's counter through its counters snapshot (refreshed about once a second),
    on the embedded store their sum (each replica counts the plays it was told of). RuntimeError
    naming the counters when that takes longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = [play_counter(s) for s in recalls]
        increase = [a - b for a, b in zip(after, before, strict=True)]
        if (min(increase) if shared else sum(increase)) >= plays:
            return after
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"recall play counters {after} (from {before}) did not take in the {plays} "
                f"accepted plays within {timeout_s} s"
            )
        time.sleep(0.1)


def run(running: stack.Stack, users: int, count: int, shared: bool) -> dict:
    gateways = [s for s in running.services if s.name == "gateway"]
    recalls = [s for s in running.services if s.name == "recall"]
    counters_before = [play_counter(s) for s in recalls]
    clients = [CascadeClient(g.address, timeout_s=5.0) for g in gateways]
    shown_again, played_ok, errors = 0, 0, 0
    started = time.perf_counter()
    try:
        for user in range(1, users + 1):
            first, second = clients[user % 2], clients[(user + 1) % 2]
            try:
                page = list(first.recommend(user, count=count).items.item_ids)
                played = page[0]
                played_ok += first.feedback([(user, played, "play")]).accepted
                again = list(second.recommend(user, count=count).items.item_ids)
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                errors += 1
                print(f"user {user}: {error}", file=sys.stderr)
                continue
            shown_again += played in again
    finally:
        for client in clients:
            client.close()
    seconds = time.perf_counter() - started
    counters_after = settled_play_counters(recalls, counters_before, played_ok, shared, 30.0)
    settled_s = time.perf_counter() - started - seconds
    return {
        "users": users,
        "plays_accepted": played_ok,
        "errors": errors,
        "played_item_shown_again": shown_again,
        "seconds": round(seconds, 1),
        "counters_settled_seconds": round(settled_s, 2),
        "recall_play_counters_before": counters_before,
        "recall_play_counters_after": counters_after,
        "counters_agree_across_recall_replicas": len(set(counters_after)) == 1,
        "counter_increase": [a - b for a, b in zip(counters_after, counters_before, strict=True)],
        "calls_served_per_replica": {
            f"{s.name}:{s.port}": int(served_calls(scrape(s))) for s in running.services
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/replicas"))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip the same run on the embedded store",
    )
    parser.add_argument("--out", type=Path, default=Path("results/state"))
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.run_dir / "redis", ignore_errors=True)  # an empty store: no earlier run
    redis = RedisProcess.start(args.run_dir / "redis")
    try:
        running = start_replicas(args.run_dir, args.artifacts, args.data_dir, redis.url)
        try:
            report = {
                "replicas": {n: sum(s.name == n for s in running.services) for n in REPLICAS},
                "store": "redis-server (Debian package), AOF appendfsync always, loopback",
                **run(running, args.users, args.count, shared=True),
            }
        finally:
            stack.down(args.run_dir, quiet=True)
    finally:
        redis.stop()
    if args.control:
        running = start_replicas(args.run_dir, args.artifacts, args.data_dir, "memory")
        try:
            control = run(running, args.users, args.count, shared=False)
        finally:
            stack.down(args.run_dir, quiet=True)
        keys = ("played_item_shown_again", "recall_play_counters_after", "counter_increase")
        report["memory_control"] = {k: control[k] for k in keys}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replicas.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = report["played_item_shown_again"] == 0 and report["counters_agree_across_recall_replicas"]
    ok &= report["counter_increase"] == [report["plays_accepted"]] * len(report["counter_increase"])
    return 0 if ok and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
