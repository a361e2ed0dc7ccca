"""The gateway's per-request cuts, each measured against the code it replaced, side by side.

    python -m bench.gateway_path --out results/cascade [--rounds 30]

As bench/request_path.py: old and new run alternately, round after round, on the same inputs in
one process; the report gives the median time of each (CPU and wall clock where a disk flush is
involved) and the median of the per-round ratios:

- an answer's impression record, CPU per answer: one answer per frame with the log's cast to the
  schema (old) against the cast skipped when the table has the schema already, at one answer per
  frame and at 4 (what the writer's `impression_linger_s` of 50 ms collects at 80 req/s);
- appending one impression frame to the embedded log with an fsync per append (old) against the
  impression log's `interval` policy (new); CPU and wall time;
- the gateway's labelled metrics per request: `labels()` looked up per observation (old) against
  the children resolved once (new);
- a stage server's interceptors per call (metrics and the queue guard, through grpcio's own
  interceptor pipeline): the metrics wrapper built per call around a context manager (old)
  against the method's wrapped handler built once and reused (new);
- the protobuf work of relaying one request's lists (parse each stage's reply, copy its list into
  the next request, serialize it; 2,000 / 500 / 100 / 10 candidates): what passing the packed
  bytes through undecoded could save at most, measured alone (no old / new pair: not made).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry

from bench.request_path import side_by_side
from cascade.candidates import to_proto
from cascade.eventlog import IMPRESSIONS, FileEventLog, LogSettings, conform
from cascade.guard import QueueGuard
from cascade.telemetry import MetricsInterceptor, RpcMetrics, new_registry
from cascade.v1 import (
    common_pb2,
    prerank_pb2,
    rank_pb2,
    recall_pb2,
    rerank_pb2,
)
from gateway.impressions import Shown, impression_row
from gateway.pipeline import STAGES, GatewayMetrics, Served


def frame_table(batch: list[Shown], cast: bool) -> pa.Table:
    """A batch's impression table as the writer builds it, then (`cast`, the old way) the cast
    to the schema FileEventLog.append_impressions made whatever the table's schema."""
    table = pa.Table.from_pylist([impression_row(s) for s in batch], schema=IMPRESSIONS)
    return (
        table.select(IMPRESSIONS.names).cast(IMPRESSIONS) if cast else conform(table, IMPRESSIONS)
    )


def answers(rng: np.random.Generator, n: int) -> list[Shown]:
    """`n` answers shaped like the gateway's: 2,000 / 500 / 100 / 10 candidates per stage."""
    out = []
    for _ in range(n):
        served = Served(versions={"recall": "v1", "rank": "v1", "rerank": "v1"})
        for stage, size in zip(STAGES, (2000, 500, 100, 10), strict=True):
            ids = rng.permutation(np.arange(1, 2100))[:size]
            masks = rng.integers(1, 128, size).astype(np.uint32)
            served.lists[stage] = to_proto(ids, rng.random(size, dtype=np.float32), masks)
        page = served.lists["rerank"]
        out.append(
            Shown(
                uuid.uuid4().hex,
                int(rng.integers(1, 900)),
                "u",
                1_000,
                list(page.item_ids),
                list(page.channel_masks),
                ["prerank"],  # one degraded stage: its scores column is []
                served,
                shown_ms=1_000,
            )
        )
    return out


def appends(rounds: int, calls: int, table: pa.Table) -> dict:
    """One-row impression frames appended with an fsync each (old) and on `interval` (new)."""
    folder = Path(tempfile.mkdtemp(prefix="cascade-gateway-path-", dir="."))
    try:
        logs = {
            policy: FileEventLog(folder / policy, LogSettings(impressions_fsync=policy))
            for policy in ("always", "interval")
        }
        report = {}
        for clock_name, clock in (("cpu", time.process_time), ("wall", time.perf_counter)):
            report[clock_name] = side_by_side(
                lambda: logs["always"].append_impressions(table),
                lambda: logs["interval"].append_impressions(table),
                rounds,
                calls,
                clock=clock,
            )
        for log in logs.values():
            log.close()
        return report
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def metric_labels(rounds: int, calls: int) -> dict:
    """The four stage latencies and the arm's answer and latency of one request."""
    metrics = GatewayMetrics(CollectorRegistry())

    def old() -> None:
        for stage in STAGES:
            metrics.stage_latency.labels(stage).observe(0.003)
        metrics.arm_answers.labels("none").inc()
        metrics.arm_latency.labels("none").observe(0.01)

    def new() -> None:
        for stage in STAGES:
            metrics.labelled(metrics.stage_latency, stage).observe(0.003)
        metrics.labelled(metrics.arm_answers, "none").inc()
        metrics.labelled(metrics.arm_latency, "none").observe(0.01)

    return side_by_side(old, new, rounds, calls, clock=time.process_time)


class OldMetricsInterceptor(MetricsInterceptor):
    """The metrics interceptor before: a new wrapped handler per call, a context manager
    (`old_observe`) around the behavior."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        rpc = handler_call_details.method.lstrip("/")
        return handler._replace(unary_unary=self._old_wrap(handler.unary_unary, rpc))

    def _old_wrap(self, behavior, rpc: str):
        metrics = self.metrics

        def handle(request, context):
            with old_observe(metrics, rpc, context):
                return behavior(request, context)

        return handle


@contextmanager
def old_observe(metrics: RpcMetrics, rpc: str, context) -> Iterator[None]:
    """RpcMetrics.observe as it was: the call's bookkeeping as a context manager."""
    latency, in_flight = metrics._rpc_children(rpc)
    in_flight.inc()
    start = time.perf_counter()
    code = grpc.StatusCode.UNKNOWN
    try:
        yield
        code = context.code() or grpc.StatusCode.OK
    except BaseException:
        aborted = context.code()
        code = aborted if aborted not in (None, grpc.StatusCode.OK) else code
        raise
    finally:
        latency.observe(time.perf_counter() - start)
        in_flight.dec()
        metrics._code_counter(rpc, code).inc()


def server_interceptors(rounds: int, calls: int) -> dict:
    """CPU per call of a stage's interceptor pipeline plus a trivial behavior, old and new."""
    from concurrent import futures

    from grpc._interceptor import service_pipeline

    pool = futures.ThreadPoolExecutor(1)
    pipelines = {}
    for name, kind in (("old", OldMetricsInterceptor), ("new", MetricsInterceptor)):
        registry = new_registry()
        guard = QueueGuard("rank", pool, 16, registry)
        pipelines[name] = service_pipeline([kind(RpcMetrics("rank", registry)), guard])
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    details = SimpleNamespace(method="/cascade.v1.Rank/Rank", invocation_metadata=())
    context = SimpleNamespace(code=lambda: None, invocation_metadata=tuple)

    def call(pipeline) -> None:
        pipeline.execute(lambda _: handler, details).unary_unary(b"", context)

    report = side_by_side(
        lambda: call(pipelines["old"]),
        lambda: call(pipelines["new"]),
        rounds,
        calls,
        clock=time.process_time,
    )
    pool.shutdown()
    return report


def relay_copies(rounds: int, calls: int) -> dict:
    """CPU per request of the gateway's protobuf work on the lists between the stages."""
    rng = np.random.default_rng(1)
    user = common_pb2.UserContext(user_id=5, recent_item_ids=[1, 2, 3], request_time_ms=1)
    replies = []
    for size, response in zip(
        (2000, 500, 100, 10),
        (
            recall_pb2.RecallResponse,
            prerank_pb2.PrerankResponse,
            rank_pb2.RankResponse,
            rerank_pb2.RerankResponse,
        ),
        strict=True,
    ):
        ids = rng.permutation(np.arange(1, 2100))[:size]
        masks = rng.integers(1, 128, size).astype(np.uint32)
        message = response(model_version="v1")
        to_proto(ids, rng.random(size, dtype=np.float32), masks, out=message.candidates)
        replies.append((response, message.SerializeToString()))
    requests = (
        recall_pb2.RecallRequest,
        prerank_pb2.PrerankRequest,
        rank_pb2.RankRequest,
        rerank_pb2.RerankRequest,
    )

    def relay() -> None:
        candidates = None
        for request, (response, data) in zip(requests, replies, strict=True):
            if candidates is None:
                request(user=user, count=2000).SerializeToString()
            else:
                request(user=user, count=500, candidates=candidates).SerializeToString()
            candidates = response.FromString(data).candidates

    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            relay()
        times.append(1e6 * (time.process_time() - start) / calls)
    return {"us_per_request": round(float(np.median(times)), 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    report: dict = {
        "machine_note": "2 shared cores, other work running; old and new alternate each round",
        "rounds": args.rounds,
    }
    one, four = answers(rng, 1), answers(rng, 4)
    old_rows, new_rows = frame_table(four, True), frame_table(four, False)
    # Same schema, same values (NaN included: repr, since NaN != NaN).
    assert old_rows.schema.equals(new_rows.schema)
    assert repr(old_rows.to_pylist()) == repr(new_rows.to_pylist())
    per_answer = {
        "old_one_per_frame_us": [],
        "new_one_per_frame_us": [],
        "new_four_per_frame_us": [],
    }
    runs = {
        "old_one_per_frame_us": lambda: frame_table(one, True),
        "new_one_per_frame_us": lambda: frame_table(one, False),
        "new_four_per_frame_us": lambda: frame_table(four, False),
    }
    for _ in range(args.rounds):  # alternating, as side_by_side; CPU per answer
        for name, run in runs.items():
            start = time.process_time()
            for _ in range(20):
                run()
            size = 4 if "four" in name else 1
            per_answer[name].append(1e6 * (time.process_time() - start) / 20 / size)
    old = np.array(per_answer["old_one_per_frame_us"])
    report["impression_row_cpu_per_answer"] = {
        **{k: round(float(np.median(v)), 1) for k, v in per_answer.items()},
        "one_per_frame_new_over_old": round(
            float(np.median(np.array(per_answer["new_one_per_frame_us"]) / old)), 3
        ),
        "four_per_frame_new_over_old": round(
            float(np.median(np.array(per_answer["new_four_per_frame_us"]) / old)), 3
        ),
    }
    print("impression rows", json.dumps(report["impression_row_cpu_per_answer"]), flush=True)
    report["impression_append"] = appends(args.rounds, 10, frame_table(one, False))
    print("impression append", json.dumps(report["impression_append"]), flush=True)
    report["metric_labels_cpu"] = metric_labels(args.rounds, 200)
    print("metric labels", json.dumps(report["metric_labels_cpu"]), flush=True)
    report["server_interceptors_cpu"] = server_interceptors(args.rounds, 2000)
    print("server interceptors", json.dumps(report["server_interceptors_cpu"]), flush=True)
    report["relay_copies_cpu"] = relay_copies(args.rounds, 50)
    print("relay copies", json.dumps(report["relay_copies_cpu"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_path.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}/gateway_path.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
