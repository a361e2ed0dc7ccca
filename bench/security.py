"""The latency cost of TLS and mutual TLS: per hop and end to end, measured side by side.

    python -m bench.security --out results/security [--calls 2000] [--requests 600]

Per hop: three loopback servers from cascade.server.serve with the same echo service (a
2,000-candidate list each way, the recall -> prerank hop's size): plaintext, TLS, and mutual TLS
with the caller check. Calls alternate between them in rounds over warm channels, so machine noise
falls on all three alike. A new connection's first call (the handshake) is timed too.
End to end: two local stacks at once from app.stack, one plaintext and one with `tls=True`
(TLS at the gateway, mutual TLS on every stage hop), asked in turn, one request at a time.
Writes tls_cost.json and tls_cost.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from app import stack
from cascade.candidates import from_proto, to_proto
from cascade.certs import make_certificates
from cascade.client import ClientSettings, make_channel
from cascade.server import ServerSettings, serve
from cascade.v1 import rerank_pb2, rerank_pb2_grpc
from gateway.client import CascadeClient

MODES = ("plaintext", "TLS", "mutual TLS")
SERVICE = rerank_pb2.DESCRIPTOR.services_by_name["Rerank"].full_name
HOP_CANDIDATES = 2000


class Echo(rerank_pb2_grpc.RerankServicer):
    def Rerank(self, request, context):
        response = rerank_pb2.RerankResponse()
        to_proto(*from_proto(request.candidates), out=response.candidates)
        return response


def _settings(certs) -> dict[str, tuple[ServerSettings, ClientSettings]]:
    quiet = {"metrics_port": -1, "reload_interval_s": 0.0, "grace_s": 0.1}
    client = {"timeout_s": 5.0, "max_attempts": 1}
    return {
        "plaintext": (ServerSettings(**quiet), ClientSettings(**client)),
        "TLS": (
            ServerSettings(tls_cert=certs.server, tls_key=certs.server_key, **quiet),
            ClientSettings(tls_ca=certs.ca, **client),
        ),
        "mutual TLS": (
            ServerSettings(
                tls_cert=certs.server, tls_key=certs.server_key, tls_client_ca=certs.ca, **quiet
            ),
            ClientSettings(
                tls_ca=certs.ca, tls_cert=certs.gateway, tls_key=certs.gateway_key, **client
            ),
        ),
    }


def _stats(values_ms: list[float], base_ms: list[float] | None = None) -> dict:
    p50, p99 = np.percentile(values_ms, [50, 99])
    row = {"n": len(values_ms), "p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4)}
    if base_ms is not None:
        base = float(np.median(base_ms))
        row["p50_ratio"] = round(float(p50) / base, 3)
        row["p50_extra_ms"] = round(float(p50) - base, 4)
    return row


def per_hop(certs, calls: int, rounds: int = 20, handshakes: int = 30) -> dict:
    request = rerank_pb2.RerankRequest(count=HOP_CANDIDATES)
    ids = np.arange(1, HOP_CANDIDATES + 1)
    to_proto(ids, np.linspace(1, 0, len(ids)), np.ones(len(ids), np.uint32), out=request.candidates)
    servers, channels, calls_ms, first_ms = {}, {}, {}, {}
    try:
        for mode, (server_settings, client_settings) in _settings(certs).items():

            def add(server: grpc.Server) -> list[str]:
                rerank_pb2_grpc.add_RerankServicer_to_server(Echo(), server)
                return [SERVICE]

            servers[mode] = serve(f"echo-{mode}", add, server_settings)
            channels[mode] = make_channel(servers[mode].address, client_settings)
            rerank_pb2_grpc.RerankStub(channels[mode]).Rerank(request)  # connect, warm
            calls_ms[mode], first_ms[mode] = [], []
        stubs = {m: rerank_pb2_grpc.RerankStub(c) for m, c in channels.items()}
        for _ in range(rounds):
            for mode in MODES:
                for _ in range(calls // rounds):
                    started = time.perf_counter()
                    stubs[mode].Rerank(request)
                    calls_ms[mode].append(1e3 * (time.perf_counter() - started))
        for _ in range(handshakes):  # a new connection each: TCP + the TLS handshake + a call
            for mode, (_, client_settings) in _settings(certs).items():
                started = time.perf_counter()
                with make_channel(servers[mode].address, client_settings) as channel:
                    rerank_pb2_grpc.RerankStub(channel).Rerank(request)
                first_ms[mode].append(1e3 * (time.perf_counter() - started))
    finally:
        for channel in channels.values():
            channel.close()
        for server in servers.values():
            server.stop(0)
    base, base_first = calls_ms["plaintext"], first_ms["plaintext"]
    return {
        "candidates_each_way": HOP_CANDIDATES,
        "warm_call": {m: _stats(calls_ms[m], base) for m in MODES},
        "new_connection_first_call": {m: _stats(first_ms[m], base_first) for m in MODES},
    }


def end_to_end(root: Path, data_dir: Path, dataset: str, requests: int, users) -> dict:
    latencies: dict[str, list[float]] = {"plaintext": [], "mutual TLS": []}
    with tempfile.TemporaryDirectory(dir=root / "..") as scratch:
        options = {"artifacts": root, "data_dir": data_dir, "dataset": dataset, "train": False}
        with (
            stack.running_stack(Path(scratch) / "plain", **options) as plain,
            stack.running_stack(Path(scratch) / "tls", tls=True, **options) as secure,
        ):
            clients = {
                "plaintext": CascadeClient(plain.address("gateway"), timeout_s=5.0),
                "mutual TLS": CascadeClient(
                    secure.address("gateway"), timeout_s=5.0, tls_ca=secure.certs / "ca.pem"
                ),
            }
            for client in clients.values():
                for user in users[:20]:  # warm: connections, caches
                    client.recommend(int(user), count=10)
            degraded = dict.fromkeys(clients, 0)
            for i in range(requests):
                user = int(users[i % len(users)])
                for mode, client in clients.items():
                    started = time.perf_counter()
                    reply = client.recommend(user, count=10)
                    latencies[mode].append(1e3 * (time.perf_counter() - started))
                    degraded[mode] += bool(reply.degraded)
            for client in clients.values():
                client.close()
    base = latencies["plaintext"]
    rows = {m: _stats(v, base) | {"degraded": degraded[m]} for m, v in latencies.items()}
    return {"requests_each": requests, "modes": rows}


def markdown(report: dict) -> str:
    hop, e2e = report["per_hop"], report.get("end_to_end")
    lines = [
        "TLS cost, one run, modes interleaved (shared 2-core machine; medians).",
        "",
        f"Per hop ({hop['candidates_each_way']} candidates each way, loopback, warm channel):",
        "",
        "| mode | p50 ms | p99 ms | p50 ratio | p50 extra ms | new connection p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        w, n = hop["warm_call"][mode], hop["new_connection_first_call"][mode]
        lines.append(
            f"| {mode} | {w['p50_ms']} | {w['p99_ms']} | {w.get('p50_ratio', 1.0)} | "
            f"{w.get('p50_extra_ms', 0.0)} | {n['p50_ms']} |"
        )
    if e2e:
        lines += [
            "",
            f"End to end (Recommend, {e2e['requests_each']} requests per stack, alternating; "
            "mutual TLS = TLS at the gateway and mutual TLS on every stage hop):",
            "",
            "| stack | p50 ms | p99 ms | p50 ratio | p50 extra ms | degraded |",
            "|---|---|---|---|---|---|",
        ]
        for mode, r in e2e["modes"].items():
            lines.append(
                f"| {mode} | {r['p50_ms']} | {r['p99_ms']} | {r.get('p50_ratio', 1.0)} | "
                f"{r.get('p50_extra_ms', 0.0)} | {r['degraded']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--calls", type=int, default=2000, help="per-hop calls per mode")
    parser.add_argument("--requests", type=int, default=600, help="end-to-end requests per mode")
    parser.add_argument("--skip-stack", action="store_true", help="per hop only (no bundle)")
    parser.add_argument("--out", type=Path, default=Path("results/security"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        certs = make_certificates(Path(folder))
        report: dict = {"per_hop": per_hop(certs, args.calls)}
    print(json.dumps(report["per_hop"]["warm_call"]), flush=True)
    if not args.skip_stack:
        from cascade.artifacts import Bundle
        from cascade.data import load_dataset

        bundle = Bundle.open(args.artifacts, args.bundle)
        dataset = bundle.component("recall")["dataset"]
        users = np.random.default_rng(0).permutation(
            load_dataset(dataset, args.data_dir).users["user_id"]
        )
        report["end_to_end"] = end_to_end(
            args.artifacts.resolve(), args.data_dir, dataset, args.requests, users
        )
        report["bundle"] = bundle.version
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tls_cost.json").write_text(json.dumps(report, indent=2))
    (args.out / "tls_cost.md").write_text(markdown(report))
    print(markdown(report))
    print(f"saved {args.out}/tls_cost.json, tls_cost.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
