"""One tiny bundle per session (every stage trained on a seeded world saved as "ml-100k"), and
the whole stack in-process: each stage server and the gateway on ephemeral 127.0.0.1 ports."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import torch

from cascade.artifacts import BundleWriter, publish
from cascade.data.schema import Dataset, save
from cascade.data.split import split_dataset
from cascade.server import RunningServer, ServerSettings, serve
from cascade.telemetry import ModelMetrics, new_registry
from cascade.topology import STAGES
from cascade.traffic_pool import PoolSettings
from gateway.server import GatewaySettings, start
from services.rank.export import write_component
from services.rank.model import ModelConfig
from services.rank.server import SERVER as RANK_SERVER
from services.rank.server import STAGE as RANK
from services.rank.server import RankService, RankSettings, load_scorer
from services.rank.train import TrainConfig
from services.recall.server import RecallSettings
from services.recall.server import start as start_recall
from services.recall.train import build_recall
from services.recall.two_tower import TwoTowerConfig
from services.rerank.server import RerankSettings
from services.rerank.server import start as start_rerank
from services.rerank.train import build as build_rerank
from tests.conftest import make_tiny_dataset
from training.rank_train import train

VERSION = "v1"
# Pre-rank (services/prerank) comes from another issue: when its server module exists, its
# component joins the bundle and its server the stack (`_build_prerank` / `_start_prerank`);
# without it the stack runs without prerank and the gateway degrades it (recall order, truncated).
HAS_PRERANK = importlib.util.find_spec("services.prerank.server") is not None


def tiny_world() -> Dataset:
    dataset = make_tiny_dataset(seed=3, n_users=30, n_items=60, n_events=500)
    dataset.meta = {**dataset.meta, "name": "ml-100k"}  # stage servers read this name's folder
    return dataset


@dataclass
class Built:
    dataset: Dataset
    data_dir: Path
    artifacts: Path


def build_bundle(root: Path, dataset: Dataset) -> Built:
    """Trains every stage on `dataset` (saved as "ml-100k") into a bundle published as current."""
    torch.set_num_threads(1)
    dataset.meta = {**dataset.meta, "name": "ml-100k"}  # stage servers read this name's folder
    save(dataset, root / "data" / "ml-100k")
    artifacts = root / "artifacts"
    train_log = split_dataset(dataset).train_interactions
    writer = BundleWriter(artifacts, VERSION)
    config = TwoTowerConfig(dim=8, hidden=16, epochs=1, batch_size=16)
    build_recall(dataset, train_log, writer, two_tower_config=config, progress=False)
    writer.commit()
    train_config = TrainConfig(seed=0, batch_size=32, max_epochs=2)
    model_config = ModelConfig(common_width=8, expert_hidden=16, expert_width=8, tower_hidden=8)
    model, prepared, info = train(dataset, train_config, model_config)
    writer = BundleWriter(artifacts, VERSION)
    write_component(
        writer,
        model,
        prepared.spec,
        "ml-100k",
        train_config,
        model_config,
        info,
        prepared.test[0],
    )
    writer.commit()
    build_rerank("ml-100k", root / "data", artifacts, VERSION, dim=4)
    if HAS_PRERANK:
        _build_prerank(root / "data", artifacts)
    publish(artifacts, VERSION)
    return Built(dataset, root / "data", artifacts)


# No connection ageing: a module's stack can outlive the 300 s default on a busy machine, and when a
# server ages out a connection its client (the gateway, here in the test process) may get a final
# GOAWAY "Cancelling all calls" that gRPC core logs to stderr as "Got goaway [2]" (reproduced with
# max_connection_age_s=1 on an idle channel: 3 runs in 6). Ageing itself is a production setting.
QUIET = ServerSettings(port=0, metrics_port=-1, grace_s=0.2, max_connection_age_s=0.0)


@dataclass
class Stack:
    """Running stage servers by name (a stopped one is removed) and the gateway."""

    stages: dict[str, RunningServer]
    gateway: RunningServer
    settings: GatewaySettings
    recall_service: object  # services.recall.server.RecallService, for its store

    def stop_stage(self, name: str) -> None:
        self.stages.pop(name).stop(0)


class Delay(grpc.ServerInterceptor):
    """Fault injection: every stage call waits `seconds` before it is handled."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler.unary_unary or "health" in handler_call_details.method:
            return handler
        behavior = handler.unary_unary

        def late(request, context):
            time.sleep(self.seconds)
            return behavior(request, context)

        return handler._replace(unary_unary=late)


def start_stages(
    built: Built,
    rank_delay_s: float = 0.0,
    store: str = "memory",
    server: ServerSettings = QUIET,
) -> tuple[dict, object]:
    """Every stage in-process; `server` carries their port and TLS settings."""
    common = {
        "artifacts": built.artifacts,
        "data_dir": built.data_dir,
        "server": server,
        "store": store,
    }
    # Channels get time enough on a busy machine: a channel cut by its 30 ms budget would make
    # the lists depend on load, and these tests compare lists (recall's own tests cover budgets).
    budgets = {k: replace(b, budget_ms=60_000.0) for k, b in RecallSettings().budgets().items()}
    recall = start_recall(
        RecallSettings(**common, default_count=50, fresh_window_s=10**9, **budgets)
    )
    recall_service = recall.service
    rank = start_rank(built, server, rank_delay_s)
    rerank = start_rerank(RerankSettings(**common), registry=new_registry(process_metrics=False))
    stages = {"recall": recall, "rank": rank, "rerank": rerank}
    if HAS_PRERANK:
        stages["prerank"] = _start_prerank(common)
    return stages, recall_service


def start_rank(built: Built, server: ServerSettings, delay_s: float = 0.0) -> RunningServer:
    """A real rank server (also to restart one on the port a stopped one had)."""
    settings = RankSettings(artifacts=built.artifacts, data_dir=built.data_dir, server=server)
    registry = new_registry(process_metrics=False)
    service = RankService(load_scorer(settings), 2000, ModelMetrics(RANK, registry))
    delay = [Delay(delay_s)] if delay_s else []
    reload = RANK_SERVER.reloader(settings, service)  # polls only when reload_interval_s > 0
    return serve(RANK, RANK_SERVER.add_servicers(service), server, registry, delay, reload)


def _build_prerank(data_dir: Path, artifacts: Path) -> None:
    """A student distilled for a couple of epochs from the tiny teacher, into the same bundle."""
    from services.prerank.distill import DistillConfig
    from training.prerank_train import distill_into_bundle

    config = DistillConfig(epochs=2, candidates_per_request=60, sampled_per_request=30)
    distill_into_bundle("ml-100k", data_dir, artifacts, VERSION, config)


def _start_prerank(common: dict) -> RunningServer:
    from services.prerank.server import PrerankSettings
    from services.prerank.server import start as start_prerank

    return start_prerank(PrerankSettings(**common), registry=new_registry(process_metrics=False))


def gateway_settings(built: Built, stages: dict[str, RunningServer], **overrides):
    # A port nobody listens on stands in for a stage that is not running (calls fail at once).
    targets = {f"{s}_target": "127.0.0.1:1" for s in STAGES}
    targets |= {f"{name}_target": server.address for name, server in stages.items()}
    # Each gateway logs into a fresh folder unless the test names one (a restart reuses it).
    log_dir = tempfile.mkdtemp(prefix="eventlog-", dir=built.data_dir.parent)
    overrides.setdefault("event_log", f"file:{log_dir}")
    # The tiny world's last day of items is young on its data clock: the tests of the funnel's
    # own order run without the traffic pool (tests/gateway/test_pool.py turns it on).
    overrides.setdefault("pool", PoolSettings(slots=0))
    funnel = dict(
        recall_count=40,
        prerank_count=25,
        rank_count=15,
        default_count=5,
        max_count=20,
        default_deadline_s=2.0,
        max_deadline_s=3.0,
    )
    common = {"server": QUIET, "artifacts": built.artifacts, "data_dir": built.data_dir}
    return GatewaySettings(**(common | targets | funnel | overrides))


@pytest.fixture
def stack_factory(built) -> Iterator:
    """Starts a fresh stack per call (tests that stop stages or record feedback get their own)."""
    started: list[Stack] = []

    def make(rank_delay_s: float = 0.0, **overrides) -> Stack:
        stages, recall_service = start_stages(built, rank_delay_s, overrides.get("store", "memory"))
        settings = gateway_settings(built, stages, **overrides)
        stack = Stack(stages, start(settings), settings, recall_service)
        started.append(stack)
        return stack

    make.built = built  # type: ignore[attr-defined]
    yield make
    for stack in started:
        stack.gateway.stop(0)
        stack.gateway.service.close()
        for server in stack.stages.values():
            server.stop(0)


@pytest.fixture(scope="module")
def shared_stack(built) -> Iterator[Stack]:
    """One stack for read-only tests."""
    stages, recall_service = start_stages(built)
    settings = gateway_settings(built, stages)
    stack = Stack(stages, start(settings), settings, recall_service)
    yield stack
    stack.gateway.stop(0)
    stack.gateway.service.close()
    for server in stages.values():
        server.stop(0)
