"""Pre-rank cost: 2,000 candidates per request inside the service and over loopback, and the
per-candidate cost of the student vs the teacher.

    python -m bench.prerank_scoring --artifacts artifacts --bundle ml-100k-v1

1. In the service: PrerankScorer.top (feature-store lookups, user tower in ONNX Runtime with one
   intra-op thread, the 2-D matmul over held item vectors, top-500 selection), transport excluded.
2. The whole Prerank RPC over 127.0.0.1, the server in its own process (`services.prerank.server`),
   one call at a time, requests built beforehand.
3. Per candidate: student (1.) / 2,000 vs the teacher (RankScorer.score: rows from the store + the
   ranker's ONNX graph, one thread) / 500.
Candidates are random catalog items (drawn with replacement when the catalog holds fewer than
2,000, as ml-100k's 1,682: cost does not depend on duplicates). Targets: (1.) <= 0.2 ms median,
(2.) < 1.5 ms median, ratio >= 100. Writes results/prerank/bench_scoring_<dataset>.json.
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

from cascade.candidates import to_proto
from cascade.server import free_port
from cascade.v1 import common_pb2, prerank_pb2, prerank_pb2_grpc
from services.prerank.server import PrerankSettings, load_scorer
from services.rank.scorer import RankScorer

N_CANDIDATES, KEEP, TEACHER_CANDIDATES = 2000, 500, 500


def _timed(fn, calls, warmup: int = 50) -> np.ndarray:
    for args in calls[:warmup]:
        fn(*args)
    times = np.empty(len(calls))
    for i, args in enumerate(calls):
        started = time.perf_counter()
        fn(*args)
        times[i] = time.perf_counter() - started
    return times * 1e3  # ms


def _summary(ms: np.ndarray) -> dict:
    return {
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "calls": int(len(ms)),
    }


def _rpc(args, requests: list) -> dict:
    port = free_port()
    env = {
        **os.environ,
        "CASCADE_PRERANK_ARTIFACTS": str(args.artifacts),
        "CASCADE_PRERANK_BUNDLE": args.bundle,
        "CASCADE_PRERANK_DATA_DIR": str(args.data_dir),
        "CASCADE_PRERANK_SERVER_PORT": str(port),
        "CASCADE_PRERANK_SERVER_METRICS_PORT": "-1",
        "CASCADE_PRERANK_MAX_COUNT": str(N_CANDIDATES),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "services.prerank.server"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prerank_pb2_grpc.PrerankStub(channel)
        call = stub.Prerank
        for request in requests[:20]:  # the first calls also wait for the model to load
            call(request, timeout=60)
        ms = _timed(lambda r: call(r, timeout=5), [(r,) for r in requests])
        channel.close()
        return _summary(ms)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("results/prerank"))
    args = parser.parse_args(argv)
    settings = PrerankSettings(data_dir=args.data_dir, artifacts=args.artifacts, bundle=args.bundle)
    bundle, student = load_scorer(settings)
    teacher = RankScorer.from_bundle(bundle, student.store)
    rng = np.random.default_rng(0)
    catalog = np.flatnonzero(student.known)
    users = np.flatnonzero(student.store.history(np.arange(1, 100_000))[:, 0] > 0) + 1
    replace = len(catalog) < N_CANDIDATES
    calls = [
        (int(rng.choice(users)), rng.choice(catalog, N_CANDIDATES, replace=replace), KEEP)
        for _ in range(args.requests)
    ]
    in_service = _summary(_timed(student.top, calls))
    teacher_calls = [(user, items[:TEACHER_CANDIDATES]) for user, items, _ in calls[:500]]
    teacher_ms = _summary(_timed(teacher.score, teacher_calls))
    requests = []
    for user, items, _ in calls:
        request = prerank_pb2.PrerankRequest(user=common_pb2.UserContext(user_id=user), count=KEEP)
        to_proto(items, channel_masks=np.full(len(items), 2, np.uint32), out=request.candidates)
        requests.append(request)
    rpc = _rpc(args, requests)
    student_per = in_service["p50_ms"] / N_CANDIDATES
    teacher_per = teacher_ms["p50_ms"] / TEACHER_CANDIDATES
    report = {
        "dataset": bundle.component("prerank")["dataset"],
        "bundle": bundle.version,
        "catalog_items": int(len(catalog)),
        "candidates_drawn_with_replacement": replace,
        "in_service_2000": {
            **in_service,
            "target_p50_ms": 0.2,
            "holds": in_service["p50_ms"] <= 0.2,
        },
        "rpc_loopback_2000": {**rpc, "target_p50_ms": 1.5, "holds": rpc["p50_ms"] < 1.5},
        "teacher_500": teacher_ms,
        "per_candidate_us": {"student": student_per * 1e3, "teacher": teacher_per * 1e3},
        "teacher_over_student_per_candidate": teacher_per / student_per,
        "ratio_target": 100,
        "ratio_holds": teacher_per / student_per >= 100,
        "providers": student.session.get_providers(),
        "intra_op_threads": 1,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_scoring_{report['dataset']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, path.with_suffix(".png"))
    print(json.dumps(report, indent=2))


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        ("student, 2,000\nin service", report["in_service_2000"], "tab:blue"),
        ("Prerank RPC, 2,000\nloopback", report["rpc_loopback_2000"], "tab:cyan"),
        ("teacher, 500\nin process", report["teacher_500"], "tab:red"),
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    p50 = [b[1]["p50_ms"] for b in bars]
    ax.bar(range(3), p50, color=[b[2] for b in bars])
    tail = [b[1]["p99_ms"] - b[1]["p50_ms"] for b in bars]
    ax.errorbar(range(3), p50, yerr=[[0] * 3, tail], fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(range(3), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("ms per request (bar p50, whisker p99)")
    ratio = report["teacher_over_student_per_candidate"]
    ax.set_title(f"Pre-rank cost ({report['dataset']}): teacher/student per candidate {ratio:.0f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
