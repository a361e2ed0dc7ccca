"""CPU per request of a gateway-shaped relay: grpc.aio against grpcio's sync server and client.

    python -m bench.relay --out results/cascade [--seconds 10] [--rounds 3]

A relay process answers Rerank by calling a backend process four times in sequence (as the gateway
calls its four stages), each call carrying the previous reply's candidate list on as a message,
then answers with the last list. The same relay runs once on grpc.server + a ThreadPoolExecutor +
blocking stubs (what the gateway runs) and once on grpc.aio (server and client on one event
loop). A closed loop of --workers callers drives it for --seconds; the relay's CPU time per
request (user + system, from /proc) is the figure. The modes alternate for --rounds rounds on the
same backend; the report gives each round and the medians (the machine is shared: compare the
ratio, not the absolute numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from bench.load import cpu_seconds
from cascade.candidates import to_proto
from cascade.v1 import rerank_pb2, rerank_pb2_grpc

HOPS = 4  # recall, prerank, rank, rerank


class Backend(rerank_pb2_grpc.RerankServicer):
    """Answers every call with a fixed list of `n` candidates (a stage's reply, no model)."""

    def __init__(self, n: int):
        self.reply = rerank_pb2.RerankResponse()
        rng = np.random.default_rng(0)
        to_proto(
            rng.integers(1, 10_000, n),
            rng.random(n, dtype=np.float32),
            rng.integers(1, 128, n).astype(np.uint32),
            out=self.reply.candidates,
        )

    def Rerank(self, request, context):
        return self.reply


class SyncRelay(rerank_pb2_grpc.RerankServicer):
    def __init__(self, target: str):
        self.stub = rerank_pb2_grpc.RerankStub(grpc.insecure_channel(target))

    def Rerank(self, request, context):
        candidates = request.candidates
        for _ in range(HOPS):
            hop = rerank_pb2.RerankRequest(count=request.count, candidates=candidates)
            candidates = self.stub.Rerank(hop, timeout=1.0).candidates
        return rerank_pb2.RerankResponse(candidates=candidates)


class AioRelay(rerank_pb2_grpc.RerankServicer):
    def __init__(self, target: str):
        self.stub = rerank_pb2_grpc.RerankStub(grpc.aio.insecure_channel(target))

    async def Rerank(self, request, context):
        candidates = request.candidates
        for _ in range(HOPS):
            hop = rerank_pb2.RerankRequest(count=request.count, candidates=candidates)
            candidates = (await self.stub.Rerank(hop, timeout=1.0)).candidates
        return rerank_pb2.RerankResponse(candidates=candidates)


def serve(role: str, target: str, n: int) -> None:
    """Serve `role` until stdin closes; print the port first."""
    if role == "aio":

        async def run() -> None:
            server = grpc.aio.server()
            rerank_pb2_grpc.add_RerankServicer_to_server(AioRelay(target), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            print(port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await server.stop(None)

        asyncio.run(run())
        return
    # The gateway's shape: 16 threads; the backend: a stage's 4.
    servicer = Backend(n) if role == "backend" else SyncRelay(target)
    server = grpc.server(futures.ThreadPoolExecutor(4 if role == "backend" else 16))
    rerank_pb2_grpc.add_RerankServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None)


class _Process:
    """A served role in its own process (name and pid, as cpu_seconds reads them)."""

    def __init__(self, role: str, target: str, n: int):
        self.name = role
        command = [sys.executable, "-m", "bench.relay", "--serve", role, "--target", target]
        command += ["--candidates", str(n)]
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.popen.pid
        self.address = f"127.0.0.1:{int(self.popen.stdout.readline())}"

    def close(self) -> None:
        self.popen.stdin.close()
        self.popen.wait(timeout=10)


class _Processes:
    def __init__(self, services):
        self.services = services


async def drive(target: str, workers: int, seconds: float, n: int) -> int:
    """Closed loop: `workers` callers for `seconds`; returns the answers."""
    request = rerank_pb2.RerankRequest(count=10)
    to_proto(np.arange(1, n + 1), out=request.candidates)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rerank_pb2_grpc.RerankStub(channel)
        end = time.perf_counter() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await stub.Rerank(request, timeout=5.0)
                done += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
        return done


def measure(mode: str, backend: str, args) -> dict:
    relay = _Process(mode, backend, args.candidates)
    try:
        asyncio.run(drive(relay.address, args.workers, 1.0, 100))  # warm-up
        before = cpu_seconds(_Processes([relay]))
        answers = asyncio.run(drive(relay.address, args.workers, args.seconds, 100))
        spent = cpu_seconds(_Processes([relay]))[mode] - before[mode]
    finally:
        relay.close()
    return {
        "answers_per_s": round(answers / args.seconds, 1),
        "relay_cpu_ms_per_request": round(1e3 * spent / answers, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=500, help="in each backend reply")
    parser.add_argument("--serve", choices=["backend", "sync", "aio"], help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.target, args.candidates)
        return 0
    backend = _Process("backend", "", args.candidates)
    rounds: dict[str, list[dict]] = {"sync": [], "aio": []}
    try:
        for _ in range(args.rounds):  # alternate: a neighbour's load hits both modes alike
            for mode in rounds:
                rounds[mode].append(measure(mode, backend.address, args))
                print(mode, json.dumps(rounds[mode][-1]), flush=True)
    finally:
        backend.close()
    medians = {
        mode: {
            key: round(float(np.median([r[key] for r in rows])), 3)
            for key in ("answers_per_s", "relay_cpu_ms_per_request")
        }
        for mode, rows in rounds.items()
    }
    report = {
        "benchmark": "relay",
        "what": f"a relay making {HOPS} sequential calls per request, {args.candidates} "
        f"candidates per reply, closed loop of {args.workers} callers, {args.seconds} s per "
        "round; 2 shared cores: other work ran on the machine at the same time",
        "grpcio": grpc.__version__,
        "rounds": rounds,
        "medians": medians,
        "aio_over_sync_cpu": round(
            medians["aio"]["relay_cpu_ms_per_request"]
            / medians["sync"]["relay_cpu_ms_per_request"],
            3,
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relay.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"medians": medians, "aio_over_sync_cpu": report["aio_over_sync_cpu"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
