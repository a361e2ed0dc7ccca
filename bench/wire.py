"""Round-trip latency of one hop through Cascade's server bootstrap and client factory.

    python -m bench.wire --out results/bench --calls 3000

A Rerank-like echo (decode the candidate list to numpy, encode it back) runs in a separate server
process over 127.0.0.1, once behind `cascade.server.serve` + `cascade.client.make_channel` and once
behind a bare grpc.server + insecure_channel, with 2,000 candidates as packed arrays and with a
tiny call. Calls go one at a time; the client encodes each request from numpy and decodes each
answer, as a stage does. Writes wire.json with median/p99 per case and ratios between
the encodings measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from cascade.candidates import from_proto, to_proto
from cascade.client import ClientSettings, make_channel
from cascade.server import ServerSettings, serve
from cascade.v1 import rerank_pb2, rerank_pb2_grpc

N_CANDIDATES = 2_000
# Earlier runs of this command on a 2-core VM (ms): the ratios show how far this run is from them.
# (The report's key keeps its name, perf_notes_ms, so results/bench/wire.json stays comparable.)
REFERENCE_MS = {
    "tiny": {"median": 0.367, "p99": 0.525},  # 345-389 / 490-560 µs
    "packed_2000": {"median": 0.68, "p99": 0.84},
}


class EchoRerank(rerank_pb2_grpc.RerankServicer):
    def Rerank(self, request, context):
        response = rerank_pb2.RerankResponse()
        to_proto(*from_proto(request.candidates), out=response.candidates)
        return response


def run_server(mode: str) -> None:
    """Serve EchoRerank until stdin closes; print the port first."""
    if mode == "cascade":

        def add(server: grpc.Server) -> list[str]:
            rerank_pb2_grpc.add_RerankServicer_to_server(EchoRerank(), server)
            return [rerank_pb2.DESCRIPTOR.services_by_name["Rerank"].full_name]

        running = serve("rerank", add, ServerSettings())
        port, stop = running.port, running.stop
    else:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        rerank_pb2_grpc.add_RerankServicer_to_server(EchoRerank(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()

        def stop() -> None:
            server.stop(None)

    print(port, flush=True)
    sys.stdin.read()
    stop()


def measure(stub, n_candidates: int, calls: int, warmup: int) -> np.ndarray:
    """Seconds per call, one call at a time."""
    rng = np.random.default_rng(0)
    item_ids = rng.integers(1, 10**9, n_candidates)  # (n,) int64
    scores = rng.random(n_candidates, dtype=np.float32)  # (n,)
    masks = rng.integers(1, 128, n_candidates).astype(np.uint32)  # (n,)
    latencies = np.empty(calls)
    for i in range(warmup + calls):
        start = time.perf_counter()
        request = rerank_pb2.RerankRequest(count=20)
        if n_candidates:
            to_proto(item_ids, scores, masks, out=request.candidates)
        answer = from_proto(stub.Rerank(request, timeout=5).candidates)
        if i >= warmup:
            latencies[i - warmup] = time.perf_counter() - start
    assert len(answer.item_ids) == n_candidates
    return latencies


def summary(latencies: np.ndarray) -> dict:
    return {
        "median_ms": round(float(np.median(latencies)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        "calls_per_s": round(1.0 / float(latencies.mean()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per case")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="the cases alternate this often")
    parser.add_argument("--serve", choices=["cascade", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve)
        return

    servers, stubs, channels = {}, {}, []
    try:
        for mode in ("raw", "cascade"):
            servers[mode] = subprocess.Popen(
                [sys.executable, "-m", "bench.wire", "--serve", mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            target = f"127.0.0.1:{int(servers[mode].stdout.readline())}"
            channel = (
                make_channel(target, ClientSettings())
                if mode == "cascade"
                else grpc.insecure_channel(target)
            )
            channels.append(channel)
            stubs[mode] = rerank_pb2_grpc.RerankStub(channel)
        cases = {"tiny": 0, "packed_2000": N_CANDIDATES}
        samples: dict[tuple[str, str], list[np.ndarray]] = {}
        per_round = max(1, args.calls // args.rounds)
        for _ in range(args.rounds):  # alternate so that drift hits every case alike
            for mode, stub in stubs.items():
                for case, n in cases.items():
                    samples.setdefault((mode, case), []).append(
                        measure(stub, n, per_round, args.warmup)
                    )
    finally:
        for channel in channels:
            channel.close()
        for process in servers.values():
            process.stdin.close()
            process.wait(timeout=10)

    results: dict = {mode: {} for mode in stubs}
    for (mode, case), parts in samples.items():
        results[mode][case] = summary(np.concatenate(parts))
    ratios = {
        case: {
            "cascade_vs_raw_median": round(
                results["cascade"][case]["median_ms"] / results["raw"][case]["median_ms"], 2
            ),
            "cascade_vs_perf_notes_median": round(
                results["cascade"][case]["median_ms"] / REFERENCE_MS[case]["median"], 2
            ),
            "cascade_vs_perf_notes_p99": round(
                results["cascade"][case]["p99_ms"] / REFERENCE_MS[case]["p99"], 2
            ),
        }
        for case in cases
    }
    report = {
        "benchmark": "wire",
        "what": "one Rerank echo hop over 127.0.0.1, server in its own process, calls one at a "
        "time; client encodes from numpy and decodes to numpy",
        "calls_per_case": per_round * args.rounds,
        "warmup_per_round": args.warmup,
        "rounds": args.rounds,
        "n_candidates": N_CANDIDATES,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "results": results,
        "perf_notes_ms": REFERENCE_MS,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"results": results, "ratios": ratios}, indent=2))
    print(f"wrote {args.out / 'wire.json'}")


if __name__ == "__main__":
    main()
