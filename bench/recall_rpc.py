"""Recall RPC latency for 2,000 candidates over loopback, the server in its own process.

    python bench/recall_rpc.py --artifacts artifacts --bundle current --requests 1000

Starts `python -m services.recall.server` on a free 127.0.0.1 port, waits for health, warms up,
then sends one request at a time (known users with their stored history, count 2,000) and writes
p50/p99 client-side latency plus the server's per-channel latencies to results/recall/rpc.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.candidates import CHANNELS
from cascade.client import ClientSettings, make_channel
from cascade.server import free_port
from cascade.v1 import common_pb2, recall_pb2, recall_pb2_grpc

REPO = Path(__file__).resolve().parents[1]


def wait_healthy(channel: grpc.Channel, server: subprocess.Popen, timeout_s: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"recall server exited with {server.returncode}")
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise TimeoutError("recall server did not become healthy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--users", type=int, default=2000, help="ask users 1..this, in turn")
    parser.add_argument("--out", type=Path, default=Path("results/recall/rpc.json"))
    args = parser.parse_args(argv)
    port = free_port()
    env = {
        **os.environ,
        "CASCADE_RECALL_SERVER_PORT": str(port),
        "CASCADE_RECALL_SERVER_METRICS_PORT": "-1",
        "CASCADE_RECALL_ARTIFACTS": str(args.artifacts),
        "CASCADE_RECALL_BUNDLE": args.bundle,
        "CASCADE_RECALL_DATA_DIR": str(args.data_dir),
        "OMP_NUM_THREADS": "1",
    }
    server = subprocess.Popen([sys.executable, "-m", "services.recall.server"], cwd=REPO, env=env)
    try:
        channel = make_channel(f"127.0.0.1:{port}", ClientSettings(timeout_s=5.0, max_attempts=1))
        wait_healthy(channel, server, timeout_s=180)
        stub = recall_pb2_grpc.RecallStub(channel)
        latencies, sizes, per_channel = [], [], {}
        for i in range(args.warmup + args.requests):
            user = common_pb2.UserContext(user_id=1 + i % args.users)
            started = time.perf_counter()
            response = stub.Recall(recall_pb2.RecallRequest(user=user, count=args.count))
            elapsed = time.perf_counter() - started
            if i < args.warmup:
                continue
            latencies.append(elapsed * 1000)
            sizes.append(len(response.candidates.item_ids))
            for report in response.channels:
                per_channel.setdefault(CHANNELS[report.channel], []).append(report.latency_ms)
        channel.close()
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "bundle": str(args.artifacts / args.bundle),
        "requests": args.requests,
        "count": args.count,
        "mean_candidates_returned": float(np.mean(sizes)),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 3),
        "channel_latency_ms_p50": {
            name: round(float(np.percentile(v, 50)), 3) for name, v in per_channel.items()
        },
        "channel_latency_ms_p99": {
            name: round(float(np.percentile(v, 99)), 3) for name, v in per_channel.items()
        },
        "floor_ms_p50_2000_packed_round_trip": 0.68,  # bench/wire.py on this kind of machine
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
