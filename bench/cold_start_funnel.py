"""Where uploaded items are lost in the funnel: a stack on a simulation run's bundle and event log.

    python -m bench.cold_start_funnel --run-dir .cascade/simulate-uploads --out results/loop/uploads

Copies the run's event log (its uploads, follows and events are replayed by the new stack's
stages), then for the users of the run's last pages asks recall (2,000), pre-rank (500) and rank
(100) directly at the run's last request time, and counts the uploaded items each stage keeps
per request (and in rank's first 10). Writes cold_start_funnel.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import grpc
import numpy as np

from app import stack
from cascade.backends import open_event_log
from cascade.v1 import (
    common_pb2,
    prerank_pb2,
    prerank_pb2_grpc,
    rank_pb2,
    rank_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
)


def measure(run_dir: Path, data_dir: Path, users: int) -> dict:
    work = run_dir.parent / f"{run_dir.name}-funnel"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(run_dir / "eventlog", work / "eventlog")
    log = open_event_log(f"file:{work / 'eventlog'}", read_only=True)
    try:
        uploads, pages = log.read_records("uploads"), log.read_impressions()
    finally:
        log.close()
    first_upload = int(uploads["item_id"].to_numpy().min())
    now_ms = int(pages["request_time_ms"].to_numpy().max())
    who = list(dict.fromkeys(u for u in pages["user_id"].to_pylist()[::-1] if u > 0))[:users]
    counts = []
    with stack.running_stack(
        work,
        artifacts=run_dir / "artifacts",
        data_dir=data_dir,
        dataset="synthetic",
        extra_env={"CASCADE_GATEWAY_CLOCK": "caller"},
    ):
        port = lambda s: json.loads((work / f"{s}.ports.json").read_text())["port"]  # noqa: E731
        channels = {
            s: grpc.insecure_channel(f"127.0.0.1:{port(s)}") for s in ("recall", "prerank", "rank")
        }
        for user_id in who:
            user = common_pb2.UserContext(user_id=user_id, request_time_ms=now_ms)
            recalled = recall_pb2_grpc.RecallStub(channels["recall"]).Recall(
                recall_pb2.RecallRequest(user=user, count=2000), timeout=10
            )
            preranked = prerank_pb2_grpc.PrerankStub(channels["prerank"]).Prerank(
                prerank_pb2.PrerankRequest(user=user, count=500, candidates=recalled.candidates),
                timeout=10,
            )
            ranked = rank_pb2_grpc.RankStub(channels["rank"]).Rank(
                rank_pb2.RankRequest(user=user, count=100, candidates=preranked.candidates),
                timeout=10,
            )
            lists = (recalled, preranked, ranked)
            ids = [np.asarray(x.candidates.item_ids) for x in lists]
            counts.append([int((i >= first_upload).sum()) for i in ids])
            counts[-1].append(int((ids[2][:10] >= first_upload).sum()))
            counts[-1] += [preranked.unknown_items, ranked.unknown_items]
        for channel in channels.values():
            channel.close()
    mean = np.asarray(counts, dtype=np.float64).mean(axis=0)
    return {
        "uploads_in_log": uploads.num_rows,
        "requests": len(counts),
        "request_time_ms": now_ms,
        "uploaded_per_request": {
            "recall (of 2000)": round(float(mean[0]), 3),
            "prerank (of 500)": round(float(mean[1]), 3),
            "rank (of 100)": round(float(mean[2]), 3),
            "rank first 10": round(float(mean[3]), 3),
        },
        # Candidates a stage could not score (neither its bundle nor its store knows them).
        "unknown_per_request": {"prerank": float(mean[4]), "rank": float(mean[5])},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/simulate-uploads"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("results/loop/uploads"))
    args = parser.parse_args(argv)
    report = measure(args.run_dir, args.data_dir, args.users)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start_funnel.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
