"""Durability drill: no acknowledged Feedback event is lost when processes are killed under load.

    python -m bench.durability --out results/state [--backends file redis] [--duration 30]

Per backend, the local stack runs as separate processes on free loopback ports with the gateway
logging to its event log (`file`: segmented files under the run folder, fsync per append;
`redis`: a real redis-server on a loopback port with AOF and `appendfsync always`). A fixed rate
of Feedback calls (every event unique: its own request_id and time) and of Recommend calls runs
the whole time while, at KILL_AT_S, the gateway and recall are killed with SIGKILL and started
again (and for redis, at REDIS_KILL_AT_S, redis-server too). Afterwards the log is read back:
every event whose Feedback was answered "accepted" must be in it (`lost` counts those that are
not). Events stored but not acknowledged (the gateway died between append and answer) are
reported too: a client retry of those is recorded once (dedup).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from app import stack
from bench.load import fixed_rate
from cascade.artifacts import Bundle
from cascade.backends import open_event_log
from cascade.data import load_dataset
from cascade.v1 import gateway_pb2

KILL_AT_S = 10.0  # kill -9 gateway and recall
REDIS_KILL_AT_S = 20.0  # kill -9 redis-server (redis backend)
EVENTS_PER_CALL = 2
BASE_TS_MS = 1_700_000_000_000
NEW_USER_BASE = 5_000_000_000  # external ids no dataset has: new users get dense ids online


def event_for(i: int, users: np.ndarray, items: np.ndarray) -> list[gateway_pb2.Event]:
    """Call i's events: a known user or (every 4th call) a new one, unique keys throughout."""
    user = NEW_USER_BASE + i if i % 4 == 0 else int(users[i % len(users)])
    kinds = (gateway_pb2.EVENT_TYPE_PLAY, gateway_pb2.EVENT_TYPE_LIKE)
    return [
        gateway_pb2.Event(
            user_id=user,
            item_id=int(items[(i * EVENTS_PER_CALL + j) % len(items)]),
            type=kinds[j % 2],
            timestamp_ms=BASE_TS_MS + i * EVENTS_PER_CALL + j,
            request_id=f"drill-{i}",
        )
        for j in range(EVENTS_PER_CALL)
    ]


def key(event) -> tuple:
    """An event's identity, from the wire (Event) or from the log (a row dict)."""
    if isinstance(event, dict):
        names = ("user_key", "item_id", "event", "timestamp_ms", "request_id")
        return tuple(event[n] for n in names)
    name = gateway_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower()
    return (str(event.user_id), event.item_id, name, event.timestamp_ms, event.request_id)


def faults(running: stack.Stack, start: float, redis, log: list) -> None:
    """The kill timeline, in a thread beside the load."""

    def note(event: str, **facts) -> None:
        log.append({"at_s": round(time.perf_counter() - start, 2), "event": event, **facts})

    # The sleeps keep the timeline (each kill at its second): they wait for a time, not a state.
    time.sleep(max(0.0, start + KILL_AT_S - time.perf_counter()))
    for name in ("gateway", "recall"):
        os.kill(next(s.pid for s in running.services if s.name == name), signal.SIGKILL)
    note("kill -9", services=["gateway", "recall"])
    stack.restart(running, "recall", timeout_s=120)
    stack.restart(running, "gateway", timeout_s=120)
    note("restarted and SERVING", services=["recall", "gateway"])
    if redis is not None:
        time.sleep(max(0.0, start + REDIS_KILL_AT_S - time.perf_counter()))
        redis.kill()
        note("kill -9", services=["redis-server"])
        redis.restart()
        note("restarted", services=["redis-server"])


def drill(backend: str, args, root: Path, dataset: str, users, items) -> dict:
    run_dir = root / backend
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    redis = None
    if backend == "redis":
        from cascade.redis_server import RedisProcess

        redis = RedisProcess.start(run_dir / "redis")  # AOF, appendfsync always
        uri = redis.url
    else:
        uri = f"file:{(run_dir / 'eventlog').resolve()}"
    acknowledged: list = []
    codes: dict[str, int] = {}
    recommend_ok = [0]

    async def feedback(stub, i: int, due: float):
        events = event_for(i, users, items)
        try:
            reply = await stub.Feedback(
                gateway_pb2.FeedbackRequest(events=events), timeout=args.timeout
            )
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] = codes.get(error.code().name, 0) + 1
            return
        codes["OK"] = codes.get("OK", 0) + 1
        if reply.accepted == len(events) and not reply.rejected:
            acknowledged.extend(key(e) for e in events)

    async def recommend(stub, user: int, due: float):
        try:
            await stub.Recommend(gateway_pb2.RecommendRequest(user_id=user), timeout=args.timeout)
            recommend_ok[0] += 1
        except grpc.aio.AioRpcError:
            pass

    env = {"CASCADE_GATEWAY_EVENT_LOG": uri}
    timeline: list = []
    try:
        with stack.running_stack(
            run_dir / "run",
            artifacts=args.artifacts,
            bundle=args.bundle,
            data_dir=args.data_dir,
            dataset=dataset,
            train=False,
            extra_env=env,
        ) as running:
            target = running.address("gateway")
            start = time.perf_counter() + 0.5
            thread = threading.Thread(
                target=faults, args=(running, start, redis, timeline), daemon=True
            )
            thread.start()
            calls = np.arange(int(args.feedback_rate * args.duration))

            async def load():
                return await asyncio.gather(
                    fixed_rate(target, calls, args.feedback_rate, args.duration, feedback, start),
                    fixed_rate(target, users, args.recommend_rate, args.duration, recommend, start),
                )

            asyncio.run(load())
            thread.join(timeout=120)
        # The stack is down (SIGTERM): read what the log holds, as training would.
        event_log = open_event_log(uri)
        logged = event_log.read_events().to_pylist()
        impressions = event_log.read_impressions().num_rows
        event_log.close()
    finally:
        if redis is not None:
            redis.stop()
    found = {key(row) for row in logged}
    acked = set(acknowledged)
    return {
        "backend": backend,
        "event_log": "redis (AOF, appendfsync always)" if redis else "file (fsync always)",
        "feedback_calls": int(len(calls)),
        "feedback_answers": codes,
        "events_sent": int(len(calls)) * EVENTS_PER_CALL,
        "events_acknowledged": len(acked),
        "acknowledged_found_in_log": len(acked & found),
        "lost": len(acked - found),
        "stored_not_acknowledged": len(found - acked),
        "duplicates_in_log": len(logged) - len(found),
        "recommend_answers": recommend_ok[0],
        "impressions_in_log": impressions,
        "timeline": timeline,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Durability drill",
        "",
        f"{report['duration_s']:.0f} s of {report['feedback_rate']:.0f} Feedback calls/s "
        f"({EVENTS_PER_CALL} events each) and {report['recommend_rate']:.0f} Recommend calls/s "
        f"on {report['dataset']}; kill -9 of gateway and recall at {KILL_AT_S:.0f} s "
        f"(redis: kill -9 of redis-server at {REDIS_KILL_AT_S:.0f} s). Shared 2-core machine.",
        "",
        "| backend | events sent | acknowledged | acknowledged in log | lost | stored, not acked "
        "| Recommend answers | impressions in log |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['event_log']} | {row['events_sent']} | {row['events_acknowledged']} | "
            f"{row['acknowledged_found_in_log']} | {row['lost']} | "
            f"{row['stored_not_acknowledged']} | {row['recommend_answers']} | "
            f"{row['impressions_in_log']} |"
        )
    lines += ["", f"lost in all: {report['lost']}", ""]
    for row in report["rows"]:
        answers = ", ".join(f"{code} {n}" for code, n in sorted(row["feedback_answers"].items()))
        steps = "; ".join(
            f"{t['at_s']:.1f} s {t['event']} {'+'.join(t['services'])}" for t in row["timeline"]
        )
        lines.append(f"- {row['backend']}: Feedback calls answered {answers}. {steps}.")
    lines += [
        "",
        "Calls fail UNAVAILABLE while the gateway restarts and while the client's channel waits "
        "out its reconnect backoff after it (nothing is claimed for them); a stored but "
        "unacknowledged event is one whose answer was lost to the kill (a client retry of it is "
        "recorded once).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/durability"))
    parser.add_argument("--backends", nargs="+", default=["file", "redis"])
    parser.add_argument("--feedback-rate", type=float, default=40.0, help="calls per second")
    parser.add_argument("--recommend-rate", type=float, default=20.0, help="calls per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds; at least 25")
    parser.add_argument("--timeout", type=float, default=1.0, help="client deadline, seconds")
    parser.add_argument("--out", type=Path, default=Path("results/state"))
    args = parser.parse_args(argv)
    if args.duration < REDIS_KILL_AT_S + 5:
        parser.error(f"--duration must be at least {REDIS_KILL_AT_S + 5:.0f} s")
    if "redis" in args.backends and shutil.which("redis-server") is None:
        parser.error("redis-server is not installed: `make system-packages`")
    dataset = Bundle.open(args.artifacts, args.bundle).component("recall")["dataset"]
    data = load_dataset(dataset, args.data_dir)
    rng = np.random.default_rng(0)
    users = rng.permutation(data.users["user_id"])
    items = rng.permutation(data.items["item_id"])
    rows = [drill(b, args, args.run_dir, dataset, users, items) for b in args.backends]
    report = {
        "dataset": dataset,
        "duration_s": args.duration,
        "feedback_rate": args.feedback_rate,
        "recommend_rate": args.recommend_rate,
        "events_per_call": EVENTS_PER_CALL,
        "client_timeout_s": args.timeout,
        "rows": rows,
        "lost": sum(r["lost"] for r in rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "durability.json").write_text(json.dumps(report, indent=2))
    (args.out / "durability.md").write_text(markdown(report))
    print(markdown(report))
    print(f"saved {args.out}/durability.json and durability.md")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
