"""Where uploaded items are lost in the funnel: a stack on a simulation run's bundle and event log.

    python -m bench.cold_start_funnel --run-dir .cascade/simulate-uploads --out results/loop/uploads

Copies the run's event log (its uploads, follows and events are replayed by the new stack's
stages), then for the users of the run's last pages runs the gateway's own funnel
(gateway/pipeline.py, over gRPC to the stack's stages, as the end-to-end evaluation does) at the
run's last request time, stopped after rank: recall, pre-rank and rank cut at the counts the
served profile gives the gateway. Counts the uploaded items each stage keeps per request (and in
rank's first 10), and the candidates pre-rank and rank could not score (their
cascade_unknown_items counters). Writes cold_start_funnel.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from app import stack
from app.console.metrics import scrape
from cascade.backends import open_event_log
from cascade.profiles import default_profile, load_profile
from cascade.v1 import common_pb2
from gateway.pipeline import Served
from research.evaluation_e2e import stack_cascade

DATASET = "synthetic"
STAGES = ("recall", "prerank", "rank")
FIRST = 10  # rank's first items: about a page


def unknown_items(running: stack.Stack) -> dict[str, float]:
    """Each scoring stage's cascade_unknown_items so far, from its metrics endpoint."""
    ports = {s.name: s.metrics_port for s in running.services}
    return {
        name: scrape(f"http://127.0.0.1:{ports[name]}/metrics").total("cascade_unknown_items_total")
        for name in ("prerank", "rank")
    }


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
    served_profiles = [load_profile(default_profile(DATASET))]
    counts, degraded = [], 0
    with stack.running_stack(
        work,
        artifacts=run_dir / "artifacts",
        data_dir=data_dir,
        dataset=DATASET,
        profiles=served_profiles,
        extra_env={"CASCADE_GATEWAY_CLOCK": "caller"},
    ) as running:
        cascade, pools, budget = stack_cascade(running, served_profiles)
        cuts = (
            cascade.funnel.recall_count,
            cascade.funnel.prerank_count,
            cascade.funnel.rank_count,
        )
        unknown_before = unknown_items(running)
        for user_id in who:
            served = Served()
            user = common_pb2.UserContext(user_id=user_id, request_time_ms=now_ms)
            answer = cascade.run(
                user, FIRST, budget(), debug=False, served=served, stop_after="rank"
            )
            degraded += bool(answer.degraded)
            ids = [np.asarray(served.lists[s].item_ids) for s in STAGES]
            counts.append([int((i >= first_upload).sum()) for i in ids])
            counts[-1].append(int((ids[2][:FIRST] >= first_upload).sum()))
        unknown_after = unknown_items(running)
        for pool in pools.values():
            pool.close()
    mean = np.asarray(counts, dtype=np.float64).mean(axis=0)
    names = [f"{stage} (of {cut})" for stage, cut in zip(STAGES, cuts, strict=True)]
    return {
        "uploads_in_log": uploads.num_rows,
        "requests": len(counts),
        "request_time_ms": now_ms,
        "profile": served_profiles[0].name,
        "degraded_requests": degraded,  # a stage past its budget share: its fallback answered
        "uploaded_per_request": {
            **{name: round(float(m), 3) for name, m in zip(names, mean, strict=False)},
            f"rank first {FIRST}": round(float(mean[3]), 3),
        },
        # Candidates a stage could not score (neither its bundle nor its store knows them).
        "unknown_per_request": {
            name: (unknown_after[name] - unknown_before[name]) / max(len(counts), 1)
            for name in unknown_before
        },
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
