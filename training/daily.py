"""The daily retrain driver: after a day of serving, fold the stack's event log into the training
data, publish the next bundle, and wait until every stage answers from it (each stage's own RPC
reports the model version it served) and the gateway's catalogue is loaded from it (its Version
RPC)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from cascade.artifacts import Bundle
from cascade.eventlog_increment import read_log_since
from cascade.topology import GATEWAY, STAGES
from cascade.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    prerank_pb2,
    prerank_pb2_grpc,
    rank_pb2,
    rank_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
)
from training.retrain import Base, RetrainConfig, retrain

POLL_S = 0.5  # how often the stages are asked again while a reload is under way


class DailyRetrain:
    """After each simulated day but the last: fold the stack's event log into the training data,
    publish a new bundle and wait until every stage of the stack serves it. `stages` maps each
    running service (the gateway, whose catalogue reloads from the bundle too, and the stages) to
    its address."""

    def __init__(
        self,
        stages: Mapping[str, str],
        artifacts: Path,
        dataset: Any,
        args: Any,
        reports: list[dict],
        wait_logged: Callable[[], object],
    ):
        self.stages, self.artifacts, self.args, self.reports = stages, artifacts, args, reports
        self.wait_logged = wait_logged  # returns once the gateway logged every answer so far
        self.base = Base.of(dataset)
        self.log_url = f"file:{args.run_dir / 'eventlog'}"
        self.config = RetrainConfig(seed=args.seed)

    def __call__(self, day: int) -> None:
        if day + 1 >= self.args.days:
            return  # no later day would be served by it
        self.wait_logged()  # the day's answers are all in the log before it is read
        # What the day added after the served bundle's position, on top of what it holds.
        read = read_log_since(self.log_url, Bundle.open(self.artifacts))
        version = f"loop-day{day + 2}"  # serves day day+2 (1-based)
        report = retrain(
            self.artifacts,
            self.base,
            read.events,
            read.impressions,
            version,
            self.config,
            self.args.data_dir,
            uploads=read.uploads,  # the day's new tracks join the next bundle
            log_position=read.position,
        )
        report["log_rows_read"] = read.rows_read
        started = time.perf_counter()
        wait_for_version(self.stages, version, timeout_s=600.0)
        report["reload_seconds"] = round(time.perf_counter() - started, 1)
        report["after_day"] = day
        print(f"day {day + 1}: retrained {json.dumps(report)}", flush=True)
        self.reports.append(report)


def serving_versions(stages: Mapping[str, str], timeout_s: float = 5.0) -> dict[str, str]:
    """The bundle version each service answers from, as its own RPC reports it: the gateway's
    Version (its catalogue), and one anonymous request for one item through recall -> prerank ->
    rank -> rerank (user 0 has no history or store entry to change). A service that does not
    answer maps to its gRPC code's name."""
    versions: dict[str, str] = {}
    user = common_pb2.UserContext(user_id=0)
    channels = {stage: grpc.insecure_channel(address) for stage, address in stages.items()}
    try:
        if GATEWAY.name in channels:
            versions[GATEWAY.name] = _gateway_version(channels[GATEWAY.name], timeout_s)
        candidates = common_pb2.CandidateList()
        for stage in (s for s in STAGES if s in channels):
            call, request = _probe(stage, channels[stage], user, candidates)
            try:
                reply = call(request, timeout=timeout_s)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                versions[stage] = code.name if code is not None else "UNAVAILABLE"
                continue
            versions[stage] = reply.model_version
            if len(reply.candidates.item_ids):
                candidates = reply.candidates
    finally:
        for channel in channels.values():
            channel.close()
    return versions


def _gateway_version(channel: grpc.Channel, timeout_s: float) -> str:
    try:
        reply = gateway_pb2_grpc.GatewayStub(channel).Version(
            gateway_pb2.VersionRequest(), timeout=timeout_s
        )
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        return code.name if code is not None else "UNAVAILABLE"
    return reply.catalog_version


def _probe(
    stage: str,
    channel: grpc.Channel,
    user: common_pb2.UserContext,
    candidates: common_pb2.CandidateList,
) -> tuple[Any, Any]:
    if stage == "recall":
        return recall_pb2_grpc.RecallStub(channel).Recall, recall_pb2.RecallRequest(
            user=user, count=1
        )
    if stage == "prerank":
        return prerank_pb2_grpc.PrerankStub(channel).Prerank, prerank_pb2.PrerankRequest(
            user=user, candidates=candidates, count=1
        )
    if stage == "rank":
        return rank_pb2_grpc.RankStub(channel).Rank, rank_pb2.RankRequest(
            user=user, candidates=candidates, count=1
        )
    return rerank_pb2_grpc.RerankStub(channel).Rerank, rerank_pb2.RerankRequest(
        user=user, candidates=candidates, count=1
    )


def wait_for_version(stages: Mapping[str, str], version: str, timeout_s: float) -> None:
    """Until every service reports answering from `version` (a hot reload swaps the model, or the
    gateway's catalogue, between two requests: cascade/reload.py); RuntimeError naming what each
    serves when time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions = serving_versions(stages)
        if all(served == version for served in versions.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"still not serving {version} after {timeout_s} s: {versions}")
        time.sleep(POLL_S)
