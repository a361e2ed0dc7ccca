"""The request-path cuts, each measured against the code it replaced, side by side in one process.

    python -m bench.request_path --out results/cascade [--rounds 30]

On a shared 2-core machine a whole-stack CPU figure moves by more than these cuts between two
runs; here the old and the new way run alternately, round after round, on the same inputs, and
the report gives the median time of each and the median of the per-round ratios:

- writing a candidate list: a Python int per number through extend() (old) against the packed
  wire bytes built in numpy and parsed once by protobuf (new), at 2,000, 500 and 100 candidates:
  to_proto takes the new way from PACKED_MIN candidates on;
- an impression's stage scores: the shown items matched with the long axis outermost (old) or
  innermost (new);
- a stage call from the gateway: through the default-deadline client interceptor (old) or on
  the plain channel (new), as client CPU per call against an echo server in another process;
- online item counters after Feedback: a dict per item walked in Python (old) against one array
  read with numpy (new).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cascade.candidates import PACKED_MIN, packed_bytes, to_proto
from cascade.client import ClientSettings, make_channel
from cascade.v1 import common_pb2, rerank_pb2, rerank_pb2_grpc
from gateway.impressions import stage_scores


def extend_to_proto(item_ids, scores, masks) -> common_pb2.CandidateList:
    """How to_proto writes a list below PACKED_MIN (and wrote every list before)."""
    msg = common_pb2.CandidateList()
    msg.item_ids.extend(item_ids.tolist())
    msg.scores.extend(scores.tolist())
    msg.channel_masks.extend(masks.tolist())
    return msg


def numpy_to_proto(item_ids, scores, masks) -> common_pb2.CandidateList:
    """How to_proto writes a list of PACKED_MIN candidates or more."""
    msg = common_pb2.CandidateList()
    msg.MergeFromString(packed_bytes(item_ids, scores, masks))
    return msg


def outer_stage_scores(candidates: common_pb2.CandidateList, shown: list[int]) -> list[float]:
    """The impression scores before: (candidates, shown) with the short axis innermost."""
    ids = np.asarray(candidates.item_ids, dtype=np.int64)
    scores = np.asarray(candidates.scores, dtype=np.float32)
    match = ids[:, None] == np.asarray(shown, dtype=np.int64)[None, :]
    found = match.any(axis=0)
    return np.where(found, scores[match.argmax(axis=0)], np.nan).tolist()


def dict_counters(trained: np.ndarray, online: dict[int, np.ndarray], ids: np.ndarray):
    """Online item counters before: a dict of per-item arrays, walked per candidate."""
    inside = (ids > 0) & (ids < len(trained))
    rows = trained[np.where(inside, ids, 0)] * inside[:, None]
    for row, item in enumerate(ids.tolist()):
        extra = online.get(item)
        if extra is not None and inside[row]:
            rows[row] += extra
    return rows


def array_counters(trained: np.ndarray, online: np.ndarray, ids: np.ndarray):
    inside = (ids > 0) & (ids < len(trained))
    rows = trained[np.where(inside, ids, 0)] * inside[:, None]
    rows += online[np.where(inside, ids, 0)] * inside[:, None]
    return rows


def side_by_side(old: Callable, new: Callable, rounds: int, calls: int, clock=time.perf_counter):
    """Median microseconds per call of each, alternating `rounds` times; the median ratio."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(rounds):
        for name, fn in (("old", old), ("new", new)):
            start = clock()
            for _ in range(calls):
                fn()
            times[name].append(1e6 * (clock() - start) / calls)
    ratios = np.array(times["new"]) / np.array(times["old"])
    return {
        "old_us": round(float(np.median(times["old"])), 1),
        "new_us": round(float(np.median(times["new"])), 1),
        "new_over_old": round(float(np.median(ratios)), 3),
    }


def stage_call(rounds: int, calls: int) -> dict:
    """Client CPU per tiny Rerank call: intercepted channel (old) against the plain one (new)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.wire", "--serve", "raw"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        target = f"127.0.0.1:{int(server.stdout.readline())}"
        settings = ClientSettings()
        stubs = {
            "old": rerank_pb2_grpc.RerankStub(make_channel(target, settings)),
            "new": rerank_pb2_grpc.RerankStub(make_channel(target, settings, None, False)),
        }
        request = rerank_pb2.RerankRequest(count=10)
        for stub in stubs.values():  # connect and warm up
            for _ in range(50):
                stub.Rerank(request, timeout=1.0)
        return side_by_side(
            lambda: stubs["old"].Rerank(request, timeout=1.0),
            lambda: stubs["new"].Rerank(request, timeout=1.0),
            rounds,
            calls,
            clock=time.process_time,
        )
    finally:
        server.stdin.close()
        server.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    report: dict = {
        "machine_note": "2 shared cores, other work running; old and new alternate each round",
        "rounds": args.rounds,
        "packed_min": PACKED_MIN,
    }
    writes = {}
    for n in (2000, 500, 100):
        ids = rng.integers(1, 1700, n)
        scores = rng.random(n, dtype=np.float32)
        masks = rng.integers(1, 128, n).astype(np.uint32)
        assert extend_to_proto(ids, scores, masks) == numpy_to_proto(ids, scores, masks)
        writes[str(n)] = side_by_side(
            lambda ids=ids, s=scores, m=masks: extend_to_proto(ids, s, m),
            lambda ids=ids, s=scores, m=masks: numpy_to_proto(ids, s, m),
            args.rounds,
            20,
        )
        print("to_proto", n, json.dumps(writes[str(n)]), flush=True)
    report["to_proto"] = writes
    shown = rng.permutation(1700)[:10] + 1
    impressions = {}
    for n in (2000, 500):
        ids = np.concatenate([shown[:8], rng.permutation(np.arange(1701, 1701 + n - 8))])
        candidates = to_proto(ids, rng.random(n, dtype=np.float32), np.ones(n, np.uint32))
        page = shown.tolist()
        a, b = outer_stage_scores(candidates, page), stage_scores(candidates, page)
        assert np.array_equal(np.array(a), np.array(b), equal_nan=True)
        impressions[str(n)] = side_by_side(
            lambda c=candidates, p=page: outer_stage_scores(c, p),
            lambda c=candidates, p=page: stage_scores(c, p),
            args.rounds,
            20,
        )
        print("stage_scores", n, json.dumps(impressions[str(n)]), flush=True)
    report["stage_scores"] = impressions
    trained = rng.integers(0, 50, (1683, 6))
    online_dense = np.zeros_like(trained)
    touched = rng.integers(1, 1683, 300)
    np.add.at(online_dense, (touched, 0), 1)
    online_dict = {int(i): online_dense[i].copy() for i in np.unique(touched)}
    ids = rng.integers(1, 1683, 500)
    assert np.array_equal(
        dict_counters(trained, online_dict, ids), array_counters(trained, online_dense, ids)
    )
    report["item_counters_500"] = side_by_side(
        lambda: dict_counters(trained, online_dict, ids),
        lambda: array_counters(trained, online_dense, ids),
        args.rounds,
        20,
    )
    print("item_counters 500", json.dumps(report["item_counters_500"]), flush=True)
    report["stage_call_client_cpu"] = stage_call(args.rounds, 100)
    print("stage call", json.dumps(report["stage_call_client_cpu"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "request_path.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}/request_path.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
