"""The quality cost of each funnel size the gateway shrinks to under load, measured offline.

Every test user of the per-user temporal split (research/evaluation_e2e.py's protocol) asks the
real gateway for a page once per quality level q, through the header that lowers q for one call
(gateway/admission.py: the same `shrink` the load controller uses). Each level's pages are scored
like the e2e evaluation (NDCG@10, Recall@20) next to its funnel sizes, latency and CPU per request.

    python -m bench.funnel_shrink --out results/cascade [--levels 1 0.75 0.5 0.25 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from app import stack
from bench.load import cpu_seconds
from cascade.data import load_dataset
from cascade.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.admission import QUALITY_KEY, shrink
from gateway.pipeline import Funnel
from gateway.settings import GatewaySettings
from research.evaluation_e2e import K, Protocol, _page


def measure_level(running: stack.Stack, protocol: Protocol, q: float) -> dict:
    channel = grpc.insecure_channel(running.address("gateway"))
    stub = gateway_pb2_grpc.GatewayStub(channel)
    metadata = ((QUALITY_KEY, f"{q}"),)
    pages = np.zeros((len(protocol.users), K), np.int64)
    latencies, shrunk = [], 0
    before = cpu_seconds(running)
    for row, user in enumerate(protocol.users.tolist()):
        started = time.perf_counter()
        answer = stub.Recommend(
            gateway_pb2.RecommendRequest(user_id=user, count=K), timeout=5.0, metadata=metadata
        )
        latencies.append(1e3 * (time.perf_counter() - started))
        pages[row] = _page(answer.items.item_ids)
        shrunk += "funnel" in answer.degraded_stages
    spent = {n: c - before[n] for n, c in cpu_seconds(running).items() if n != "load generator"}
    channel.close()
    settings = GatewaySettings()
    full = Funnel(settings.recall_count, settings.prerank_count, settings.rank_count, 0)
    funnel = shrink(full, q, K)
    return {
        "q": q,
        "recall": funnel.recall_count,
        "prerank": funnel.prerank_count,
        "rank": funnel.rank_count,
        **{k: round(v, 4) for k, v in protocol.score(pages).items() if k != "n_test_users"},
        "n_test_users": len(protocol.users),
        "shrunk_answers": shrunk,
        "p50_ms": round(float(np.median(latencies)), 2),
        "cpu_ms_per_request": round(1e3 * sum(spent.values()) / len(protocol.users), 2),
    }


def to_markdown(rows: list[dict]) -> str:
    full = rows[0]
    lines = [
        "# Quality cost of the shrunk funnel (ml-100k, every test user, through the gateway)",
        "",
        "Measured one request at a time on a shared 2-core machine: latency and CPU are for "
        "comparison between levels of this run only.",
        "",
        "| q | recall | prerank | rank | NDCG@10 | vs full | Recall@20 | p50 ms | "
        "CPU ms / request |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        change = 100 * (r["NDCG@10"] / full["NDCG@10"] - 1)
        lines.append(
            f"| {r['q']} | {r['recall']} | {r['prerank']} | {r['rank']} | {r['NDCG@10']:.4f} | "
            f"{change:+.1f}% | {r['Recall@20']:.4f} | {r['p50_ms']} | {r['cpu_ms_per_request']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/funnel"))
    parser.add_argument("--levels", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25, 0.1])
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    args = parser.parse_args(argv)
    protocol = Protocol.build(load_dataset(args.dataset, args.data_dir), None, 0)
    where = {"artifacts": args.artifacts, "data_dir": args.data_dir, "dataset": args.dataset}
    where |= {"bundle": args.bundle, "train": args.bundle == "current"}
    rows = []
    # One request at a time meets no queueing at the gateway, so the load controller leaves q at
    # 1: every level is exactly its q.
    with stack.running_stack(args.run_dir, **where) as running:
        for q in args.levels:
            rows.append(measure_level(running, protocol, q))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "funnel_shrink.json").write_text(json.dumps({"levels": rows}, indent=2))
    (args.out / "funnel_shrink.md").write_text(to_markdown(rows))
    print(to_markdown(rows))
    print(f"saved {args.out}/funnel_shrink.json, funnel_shrink.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
