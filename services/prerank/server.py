"""The Prerank gRPC service: recall's candidates in, the student's top `count` out.

    python -m services.prerank.server [--config prerank.toml]   (env: CASCADE_PRERANK_*, e.g.
    CASCADE_PRERANK_SERVER_PORT, CASCADE_PRERANK_SCORER_INTRA_OP_THREADS,
    CASCADE_PRERANK_SCORER_EXECUTION_PROVIDER, CASCADE_PRERANK_DEFAULT_COUNT)

count: 0 -> `default_count`; above the list -> the whole list; above `max_count` ->
INVALID_ARGUMENT naming `count`. Unknown candidates are scored last and counted. A student whose
teacher_version is not the bundle's rank version sets a warning gauge and logs at start; a bundle
trained on another feature spec is refused before the port opens.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Gauge

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
from cascade.v1 import catalog_pb2_grpc, prerank_pb2, prerank_pb2_grpc
from cascade.warmup import WarmUp, candidates_request
from services.prerank.scorer import COMPONENT, PrerankScorer, ScorerSettings

log = logging.getLogger(__name__)
STAGE = "prerank"
SERVICE = prerank_pb2.DESCRIPTOR.services_by_name["Prerank"].full_name


@dataclass(frozen=True)
class PrerankSettings:
    server: ServerSettings = field(default_factory=lambda: ServerSettings.of("prerank"))
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    data_dir: Path = Path("data")  # the dataset is the one the bundle was trained on
    artifacts: Path = Path("artifacts")  # where bundles live
    bundle: str = "current"  # the bundle under artifacts/ it serves
    # The online store: "memory" (this process, rebuilt from the event log at start) or
    # "redis://host:port/db" (shared by every replica of every stage).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # The event log whose uploads (the living catalogue) the store replays at start; "" = none.
    event_log: str = ""
    default_count: int = 500  # when the request's count is 0
    max_count: int = 2000  # a larger count is INVALID_ARGUMENT
    max_candidates: int = 5000  # a longer list is INVALID_ARGUMENT
    max_recent_items: int = 500  # longest request.user.recent_item_ids accepted

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        if not 0 < self.default_count <= self.max_count:
            raise ValueError("need 0 < default_count <= max_count")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")


class PrerankMetrics(ModelMetrics):
    def __init__(self, registry: CollectorRegistry):
        super().__init__(STAGE, registry)
        self.teacher_mismatch = Gauge(
            "cascade_prerank_teacher_version_mismatch",
            "1 when the student was distilled from another teacher version than the bundle's rank.",
            registry=registry,
        )


class PrerankService(prerank_pb2_grpc.PrerankServicer):
    def __init__(self, scorer: PrerankScorer, settings: PrerankSettings, metrics: PrerankMetrics):
        self.scorer, self.settings, self.metrics = scorer, settings, metrics
        # Uploads the gateway forwards: a new item is scored from its creator and categories.
        self.updates = CatalogUpdatesService(lambda: self.scorer.store)
        metrics.set_model_version(scorer.version)

    def swap(self, loaded: tuple[Bundle, PrerankScorer]) -> str:
        """Serves a newly loaded (bundle, scorer) from the next request on (hot reload)."""
        bundle, scorer = loaded
        check_teacher(bundle, scorer, self.metrics)
        self.updates.reapply(scorer.store)  # its new store learns what was uploaded since start
        self.scorer = scorer
        self.metrics.set_model_version(scorer.version)
        return scorer.version

    def Prerank(self, request: prerank_pb2.PrerankRequest, context: grpc.ServicerContext):
        settings = self.settings
        count = request.count or settings.default_count
        if count > settings.max_count:
            invalid_argument(context, "count", f"{count} exceeds the maximum {settings.max_count}")
        if request.user.user_id < 0:
            invalid_argument(context, "user.user_id", f"must be >= 0, got {request.user.user_id}")
        recent = np.asarray(request.user.recent_item_ids, dtype=np.int64)
        if len(recent) > settings.max_recent_items:
            invalid_argument(
                context,
                "user.recent_item_ids",
                f"{len(recent)} ids; at most {settings.max_recent_items}",
            )
        candidates = read_candidates(context, request.candidates, settings.max_candidates)
        n = len(candidates.item_ids)
        scorer = self.scorer  # one model for the whole request, even across a hot reload
        response = prerank_pb2.PrerankResponse(
            model_version=scorer.version, teacher_version=scorer.teacher_version
        )
        self.metrics.candidates_in.inc(n)
        if not n:
            return response
        started = time.perf_counter()
        order, scores, n_unknown = scorer.top(
            request.user.user_id, candidates.item_ids, count, recent
        )
        self.metrics.inference.observe(time.perf_counter() - started)
        if n_unknown:
            self.metrics.unknown.inc(n_unknown)
        kept = candidates.take(order)
        to_proto(
            kept.item_ids,
            scores[order],
            kept.channel_masks,
            kept.channel_positions,
            out=response.candidates,
        )
        response.unknown_items = n_unknown
        self.metrics.candidates_out.inc(len(order))
        return response


def check_teacher(bundle: Bundle, scorer: PrerankScorer, metrics: PrerankMetrics) -> bool:
    """True when the student's teacher is the bundle's rank model; else gauge 1 and a log line."""
    components = bundle.manifest["components"]
    rank_version = components.get("rank", {}).get("version")
    same = rank_version == scorer.teacher_version
    metrics.teacher_mismatch.set(0 if same else 1)
    if not same:
        log.warning(
            "prerank: student %s was distilled from teacher %s but the bundle's rank is %s; "
            "the two stages may disagree: distil again",
            scorer.version,
            scorer.teacher_version,
            rank_version or "absent",
        )
    return same


def load_scorer(settings: PrerankSettings) -> tuple[Bundle, PrerankScorer]:
    """The dataset's feature store and the bundle's student; SpecMismatch when they disagree."""
    bundle = Bundle.open(settings.artifacts, settings.bundle)
    trained = FeatureSpec.from_json(bundle.file(COMPONENT, "feature_spec.json").read_text())
    dataset = load_dataset(bundle.component(COMPONENT)["dataset"], settings.data_dir)
    spec = build_spec(dataset, {f.name: f.width for f in trained.fields if f.kind != "sequence"})
    data = split_dataset(dataset)
    store = open_store(settings.store, dataset, spec, data, settings.store_limits)
    load_bundle_uploads(store, bundle)  # what its retrain folded in
    if settings.event_log:  # the items uploaded while serving come back after a restart
        replay_catalog_from(store, settings.event_log)
    return bundle, PrerankScorer.from_bundle(bundle, store, settings.scorer)


def new_service(
    settings: PrerankSettings, loaded: tuple[Bundle, PrerankScorer], registry: CollectorRegistry
) -> PrerankService:
    """The service, once the student's teacher is checked against the bundle's rank."""
    bundle, scorer = loaded
    metrics = PrerankMetrics(registry)
    check_teacher(bundle, scorer, metrics)
    return PrerankService(scorer, settings, metrics)


def describe(settings: PrerankSettings, service: PrerankService) -> str:
    scorer = service.scorer
    return (
        f"student {scorer.version} (teacher {scorer.teacher_version}), "
        f"providers {scorer.session.get_providers()}"
    )


def register(service: PrerankService, server: grpc.Server) -> None:
    prerank_pb2_grpc.add_PrerankServicer_to_server(service, server)
    catalog_pb2_grpc.add_CatalogUpdatesServicer_to_server(service.updates, server)


SERVER = StageServer(
    name=STAGE,
    settings=PrerankSettings,
    load=load_scorer,
    service=new_service,
    register=register,
    service_name=SERVICE,
    describe=describe,
    warm_up=WarmUp("Prerank", lambda: candidates_request(prerank_pb2.PrerankRequest)),
)
start, main = SERVER.start, SERVER.main

if __name__ == "__main__":
    sys.exit(main())
