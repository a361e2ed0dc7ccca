"""The Rerank gRPC service: picks the final page from rank's list (diversity + business rules).

    python -m services.rerank.server [--config rerank.toml]    # env: CASCADE_RERANK_*

Loads the "rerank" component (item embeddings) of the published bundle, refuses it when its
feature spec differs from the one the feature store was built with, and serves on
cascade.server's bootstrap (health, reflection, metrics, graceful shutdown).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from cascade.artifacts import ArtifactError, Bundle
from cascade.backends import open_store
from cascade.candidates import to_proto
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.feature_store import StoreLimits, check_store_setting
from cascade.features import FeatureSpec, build_spec
from cascade.server import ServerSettings, StageServer, invalid_argument, read_candidates
from cascade.telemetry import EXPLAIN, ModelMetrics, traffic_of
from cascade.v1 import rerank_pb2, rerank_pb2_grpc
from cascade.warmup import WarmUp, candidates_request
from services.rerank.reranker import RerankConfig, Reranker
from services.rerank.train import COMPONENT, VECTORS

STAGE = "rerank"
SERVICE = rerank_pb2.DESCRIPTOR.services_by_name["Rerank"].full_name
_METHODS = {
    rerank_pb2.DIVERSITY_METHOD_NONE: "none",
    rerank_pb2.DIVERSITY_METHOD_MMR: "mmr",
    rerank_pb2.DIVERSITY_METHOD_DPP: "dpp",
}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankSettings:
    data_dir: Path = Path("data")  # where datasets live: the bundle's own is read
    artifacts: Path = Path("artifacts")  # where bundles live
    bundle: str = "current"  # bundle name under artifacts/
    # The online store: "memory" (this process, rebuilt from the event log at start) or
    # "redis://host:port/db" (shared by every replica of every stage).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    default_count: int = 20  # page size when the request's count is 0
    max_count: int = 200  # larger counts are INVALID_ARGUMENT
    max_candidates: int = 2000  # longer lists are INVALID_ARGUMENT
    rerank: RerankConfig = field(default_factory=RerankConfig)
    server: ServerSettings = field(default_factory=lambda: ServerSettings.of("rerank"))

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        if not 1 <= self.default_count <= self.max_count:
            raise ValueError("need 1 <= default_count <= max_count")


class RerankMetrics(ModelMetrics):
    """The shared model metrics (model time = selecting one page: filters, kernel, greedy;
    unknown items = candidates without an embedding) plus drops by business rule."""

    def __init__(self, registry: CollectorRegistry):
        super().__init__(STAGE, registry)
        self.filtered = Counter(
            "cascade_rerank_filtered",
            "Candidates dropped by a business rule, by rule.",
            ["rule"],
            registry=registry,
        )


class RerankServicer(rerank_pb2_grpc.RerankServicer):
    def __init__(self, reranker: Reranker, settings: RerankSettings, registry: CollectorRegistry):
        self.reranker = reranker
        self.settings = settings
        self.metrics = RerankMetrics(registry)
        self.metrics.set_model_version(reranker.version)
        # The embedded store is this process's own: rerank remembers the pages it answered for
        # its already-shown filter. With Redis the gateway records what it actually answered.
        self.record_pages = settings.store == "memory"

    def swap(self, reranker: Reranker) -> str:
        """Serves `reranker` from the next request on (hot reload); returns its version."""
        self.reranker = reranker
        self.metrics.set_model_version(reranker.version)
        return reranker.version

    def Rerank(self, request, context):
        settings = self.settings
        count = request.count or settings.default_count
        if count > settings.max_count:
            invalid_argument(context, "count", f"{count} exceeds max_count {settings.max_count}")
        candidates = read_candidates(context, request.candidates, settings.max_candidates)
        if (candidates.item_ids <= 0).any():
            invalid_argument(context, "candidates.item_ids", "item ids must be >= 1")
        if not np.isfinite(candidates.scores).all():
            invalid_argument(context, "candidates.scores", "scores must be finite numbers")
        method = _METHODS.get(request.method)
        if method is None and request.method != rerank_pb2.DIVERSITY_METHOD_UNSPECIFIED:
            invalid_argument(context, "method", f"unknown diversity method {request.method}")
        trade_off = request.trade_off if request.HasField("trade_off") else None
        if trade_off is not None and not (math.isfinite(trade_off) and 0 <= trade_off <= 1):
            invalid_argument(context, "trade_off", f"must be in [0, 1], got {trade_off}")
        if request.user.request_time_ms < 0:
            invalid_argument(context, "user.request_time_ms", "must be >= 0 (0 = now)")
        request_ts = request.user.request_time_ms // 1000 or int(time.time())
        reranker = self.reranker  # one model for the whole request, even across a hot reload
        method = method or reranker.config.method
        self.metrics.candidates_in.inc(len(candidates.item_ids))
        started = time.perf_counter()
        page = reranker.rerank(
            candidates,
            count,
            user_id=request.user.user_id,
            recent_items=np.asarray(request.user.recent_item_ids, dtype=np.int64),
            request_ts=request_ts,
            method=method,
            trade_off=trade_off,
            explain=request.debug,
        )
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.candidates_out.inc(len(page.candidates.item_ids))
        explained = traffic_of(context) == EXPLAIN  # the console's: shown to nobody
        if (
            self.record_pages
            and not explained
            and request.user.user_id > 0
            and reranker.config.rules.filter_shown
        ):
            # On the request's clock, as the filter reads it: a simulated day later (gateway
            # clock "caller") the page may be shown again, as a real day later it may.
            shown_at = request_ts * 1000
            reranker.store.record_shown(request.user.user_id, page.candidates.item_ids, shown_at)
        for rule, dropped in page.dropped.items():
            if dropped:
                self.metrics.filtered.labels(rule).inc(dropped)
        if page.missing_embeddings:
            self.metrics.unknown.inc(page.missing_embeddings)
        response = rerank_pb2.RerankResponse(filtered=page.filtered, model_version=reranker.version)
        to_proto(*page.candidates, out=response.candidates)
        response.reasons.extend(page.reasons)
        return response


def load_reranker(settings: RerankSettings) -> Reranker:
    """The feature store (training-period plays) and the bundle's embeddings, checked to match."""
    bundle = Bundle.open(settings.artifacts, settings.bundle)
    component = bundle.component(COMPONENT)
    dataset = load_dataset(component["dataset"], settings.data_dir)
    spec = build_spec(dataset)
    built_with = FeatureSpec.from_json(bundle.load_json(COMPONENT, "feature_spec.json"))
    if component["feature_spec"] != spec.fingerprint:
        spec.check_matches(built_with, f"bundle {bundle.folder} {COMPONENT}")
        raise ArtifactError(f"{COMPONENT}: feature spec fingerprint differs from the store's")
    vectors = bundle.load_npz(COMPONENT, VECTORS)["vectors"]
    if len(vectors) != dataset.n_items:
        raise ArtifactError(
            f"{COMPONENT}: {len(vectors)} item vectors but the catalog has {dataset.n_items} ids"
        )
    parts = split_dataset(dataset)
    store = open_store(settings.store, dataset, spec, parts, settings.store_limits)
    return Reranker(settings.rerank, vectors, store, version=bundle.version)


def new_service(
    settings: RerankSettings, reranker: Reranker, registry: CollectorRegistry
) -> RerankServicer:
    return RerankServicer(reranker, settings, registry)


def describe(settings: RerankSettings, service: RerankServicer) -> str:
    return f"model {service.reranker.version}, method {service.reranker.config.method}"


SERVER = StageServer(
    name=STAGE,
    settings=RerankSettings,
    load=load_reranker,
    service=new_service,
    register=rerank_pb2_grpc.add_RerankServicer_to_server,
    service_name=SERVICE,
    describe=describe,
    warm_up=WarmUp("Rerank", lambda: candidates_request(rerank_pb2.RerankRequest)),
)
start, main = SERVER.start, SERVER.main

if __name__ == "__main__":
    sys.exit(main())
