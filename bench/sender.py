"""A fixed-rate Recommend schedule kept by several sender processes, each with its own event loop.

One asyncio process at a few hundred requests a second on a busy 2-core machine falls behind its
own schedule (tens of milliseconds at 4x saturation: the lag a single-process open loop reported
as the server's latency). Here request i of the run is due at start + i / rate and belongs to
sender i mod k; every sender connects before the common start (a wall-clock instant handed to
all), sleeps until each of its requests is due, and records, per request, its latency from the due
time (a backlog anywhere, the sender's included, counts) and from the moment it was actually sent,
so the sender's own lag is reported beside the server's answer. The senders ask the kernel for a
higher scheduling priority (`nice`, -10 by default; granted to root only, otherwise they run at
the default and say so): on a machine whose cores the stack saturates they stand in for clients
on other machines, and a starved sender would time its own wait for a CPU as the server's.

    records, seconds = fixed_rate(target, users, rate, seconds, timeout_s, debug, processes=2)

Run as `python -m bench.sender` it is one sender: a JSON job on stdin, JSON records on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
import numpy as np

from cascade.v1 import gateway_pb2, gateway_pb2_grpc

LEAD_S = 2.0  # from spawning the senders to the first due time: imports and connecting
NICE = -10  # the senders' scheduling priority, when the kernel grants it


def raise_priority(nice: int = NICE) -> int:
    """Asks for scheduling priority `nice` for this process; returns the one it has."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:  # not root (no CAP_SYS_NICE): the default priority stays
        pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def fixed_rate(
    target: str,
    users: np.ndarray,
    rate: float,
    seconds: float,
    timeout_s: float,
    debug: bool = False,
    processes: int = 2,
    nice: int = NICE,
) -> tuple[list[dict], float]:
    """`rate` Recommend calls a second for `seconds`, split over `processes` senders. Returns one
    record per request, in due order ({"i", "latency_ms", "sent_ms", "code", "degraded",
    "shrunk", "stages"}; latency_ms counts from the due time, sent_ms from the send) and the
    seconds from the first due time to the last answer (the senders' priority is in each
    record's "nice")."""
    start = time.time() + LEAD_S
    job = {
        "target": target,
        "users": [int(u) for u in users],
        "rate": rate,
        "count": int(rate * seconds),
        "start": start,
        "timeout_s": timeout_s,
        "debug": debug,
        "stride": processes,
        "nice": nice,
    }
    senders = []
    for offset in range(processes):
        sender = subprocess.Popen(
            [sys.executable, "-m", "bench.sender"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        sender.stdin.write(json.dumps(job | {"offset": offset}))
        sender.stdin.close()
        senders.append(sender)
    records, finished = [], start
    for sender in senders:
        out = json.loads(sender.stdout.read())
        sender.wait(timeout=timeout_s + 30)
        records += out["records"]
        finished = max(finished, out["finished"])
    records.sort(key=lambda r: r["i"])
    return records, finished - start


async def _send(job: dict) -> dict:
    nice = raise_priority(job["nice"])
    rate, users, start = job["rate"], job["users"], job["start"]
    async with grpc.aio.insecure_channel(job["target"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=LEAD_S)
        stub = gateway_pb2_grpc.GatewayStub(channel)
        # The shared wall-clock start in this process's monotonic clock.
        origin = time.perf_counter() + (start - time.time())

        async def ask(i: int, due: float) -> dict:
            request = gateway_pb2.RecommendRequest(
                user_id=users[i % len(users)], count=10, debug=job["debug"]
            )
            sent = time.perf_counter()
            record = {"i": i, "code": "OK", "degraded": False, "shrunk": False, "stages": {}}
            record["nice"] = nice
            try:
                answer = await stub.Recommend(request, timeout=job["timeout_s"])
                record["degraded"] = answer.degraded
                record["shrunk"] = "funnel" in answer.degraded_stages
                record["stages"] = {t.stage: t.latency_ms for t in answer.trace}
            except grpc.aio.AioRpcError as error:
                record["code"] = error.code().name
            now = time.perf_counter()
            record["latency_ms"] = 1e3 * (now - due)
            record["sent_ms"] = 1e3 * (now - sent)
            return record

        tasks = []
        for i in range(job["offset"], job["count"], job["stride"]):
            due = origin + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(ask(i, due)))
        records = await asyncio.gather(*tasks)
    return {"records": records, "finished": time.time()}


def main(argv: Sequence[str] | None = None) -> int:
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_send(job))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
