"""The Rank gRPC service: scores a candidate list with the ONNX teacher, returns it sorted.

    python -m services.rank.server [--config rank.toml]     (env: CASCADE_RANK_*, e.g.
    CASCADE_RANK_SERVER_PORT, CASCADE_RANK_SCORER_INTRA_OP_THREADS, CASCADE_RANK_MAX_CANDIDATES)

Features come from the feature store, built at start-up from the dataset's training period. A
bundle trained on another feature spec is refused before the port opens.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from cascade.artifacts import Bundle
from cascade.backends import open_store, replay_catalog_from
from cascade.candidates import to_proto
from cascade.catalog_fold import load_bundle_uploads
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.feature_store import StoreLimits, check_store_setting
from cascade.features import FeatureSpec, build_spec
from cascade.live_catalog import CatalogUpdatesService
from cascade.server import ServerSettings, StageServer, invalid_argument, read_candidates
from cascade.telemetry import ModelMetrics
from cascade.v1 import catalog_pb2_grpc, rank_pb2, rank_pb2_grpc
from cascade.warmup import WarmUp, candidates_request
from services.rank.scorer import COMPONENT, RankScorer, ScorerSettings

log = logging.getLogger(__name__)
STAGE = "rank"
SERVICE = rank_pb2.DESCRIPTOR.services_by_name["Rank"].full_name
MIN_TIME_S = 0.002  # less than this left before the deadline: scoring would be wasted work


@dataclass(frozen=True)
class RankSettings:
    server: ServerSettings = field(default_factory=lambda: ServerSettings.of("rank"))
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    data_dir: Path = Path("data")  # the dataset itself is the one the bundle was trained on
    artifacts: Path = Path("artifacts")  # where bundles live
    bundle: str = "current"  # a version folder under artifacts, or the published "current"
    # The online store: "memory" (this process, rebuilt from the event log at start) or
    # "redis://host:port/db" (shared by every replica of every stage).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # The event log whose uploads (the living catalogue) the store replays at start; "" = none.
    event_log: str = ""
    max_candidates: int = 2000  # longer lists are INVALID_ARGUMENT

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")


class RankService(rank_pb2_grpc.RankServicer):
    def __init__(self, scorer: RankScorer, max_candidates: int, metrics: ModelMetrics):
        self.scorer, self.max_candidates, self.metrics = scorer, max_candidates, metrics
        # Uploads the gateway forwards: a new item is scored from its creator and categories.
        self.updates = CatalogUpdatesService(lambda: self.scorer.store)
        metrics.set_model_version(scorer.version)

    def swap(self, scorer: RankScorer) -> str:
        """Serves `scorer` from the next request on (hot reload); returns its version."""
        self.updates.reapply(scorer.store)  # its new store learns what was uploaded since start
        self.scorer = scorer
        self.metrics.set_model_version(scorer.version)
        return scorer.version

    def Rank(self, request: rank_pb2.RankRequest, context: grpc.ServicerContext):
        candidates = read_candidates(context, request.candidates, self.max_candidates)
        n = len(candidates.item_ids)
        if request.user.user_id < 0:
            invalid_argument(context, "user.user_id", f"must be >= 0, got {request.user.user_id}")
        self.metrics.candidates_in.inc(n)
        scorer = self.scorer  # one model for the whole request, even across a hot reload
        response = rank_pb2.RankResponse(model_version=scorer.version)
        known = scorer.store.known_items(candidates.item_ids)
        n_unknown = int(n - known.sum())
        if n_unknown:
            self.metrics.unknown.inc(n_unknown)
            candidates = candidates.take(known)
        response.unknown_items = n_unknown
        if not len(candidates.item_ids):
            return response
        remaining = context.time_remaining()
        if remaining is not None and remaining < MIN_TIME_S:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left to rank")
        started = time.perf_counter()
        recent = np.asarray(request.user.recent_item_ids, dtype=np.int64)
        fused, probabilities = scorer.score(
            request.user.user_id,
            candidates.item_ids,
            recent,
            candidates.channel_masks,
            candidates.channel_positions,
        )
        self.metrics.inference.observe(time.perf_counter() - started)
        order = np.argsort(-fused, kind="stable")
        if request.count:
            order = order[: request.count]
        kept = candidates.take(order)
        to_proto(
            kept.item_ids,
            fused[order],
            kept.channel_masks,
            kept.channel_positions,
            out=response.candidates,
        )
        if request.return_task_scores:
            for i, task in enumerate(scorer.tasks):
                response.task_scores.add(task=task, probabilities=probabilities[order, i].tolist())
        self.metrics.candidates_out.inc(len(order))
        return response


def load_scorer(settings: RankSettings) -> RankScorer:
    """The dataset's feature store and the bundle's model; SpecMismatch when they disagree."""
    bundle = Bundle.open(settings.artifacts, settings.bundle)
    trained = FeatureSpec.from_json(bundle.file(COMPONENT, "feature_spec.json").read_text())
    dataset = load_dataset(bundle.component(COMPONENT)["dataset"], settings.data_dir)
    # The data's spec, with the artifact's embedding widths (widths are model config, vocabularies
    # come from the data: those must match).
    spec = build_spec(dataset, {f.name: f.width for f in trained.fields if f.kind != "sequence"})
    data = split_dataset(dataset)
    store = open_store(settings.store, dataset, spec, data, settings.store_limits)
    load_bundle_uploads(store, bundle)  # what its retrain folded in
    if settings.event_log:  # the items uploaded while serving come back after a restart
        replay_catalog_from(store, settings.event_log)
    return RankScorer.from_bundle(bundle, store, settings.scorer)


def new_service(settings: RankSettings, scorer: RankScorer, registry) -> RankService:
    return RankService(scorer, settings.max_candidates, ModelMetrics(STAGE, registry))


def describe(settings: RankSettings, service: RankService) -> str:
    return f"model {service.scorer.version}, tasks {', '.join(service.scorer.tasks)}"


def register(service: RankService, server: grpc.Server) -> None:
    rank_pb2_grpc.add_RankServicer_to_server(service, server)
    catalog_pb2_grpc.add_CatalogUpdatesServicer_to_server(service.updates, server)


SERVER = StageServer(
    name=STAGE,
    settings=RankSettings,
    load=load_scorer,
    service=new_service,
    register=register,
    service_name=SERVICE,
    describe=describe,
    warm_up=WarmUp("Rank", lambda: candidates_request(rank_pb2.RankRequest)),
)
start, main = SERVER.start, SERVER.main

if __name__ == "__main__":
    sys.exit(main())
