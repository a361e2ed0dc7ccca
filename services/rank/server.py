"""The Rank gRPC service: scores a candidate list with the ONNX teacher, returns it sorted.

    python -m services.rank.server [--config rank.toml]     (env: CASCADE_RANK_*, e.g.
    CASCADE_RANK_SERVER_PORT, CASCADE_RANK_SCORER_INTRA_OP_THREADS, CASCADE_RANK_MAX_CANDIDATES)

Features come from the feature store, built at start-up from the dataset's training period. A
bundle trained on another feature spec is refused before the port opens.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from cascade.artifacts import ArtifactError, Bundle
from cascade.candidates import to_proto
from cascade.config import SettingsError, load_settings
from cascade.data import DataError, load_dataset
from cascade.data.split import split_dataset
from cascade.feature_store import StoreLimits, check_store_setting, open_store
from cascade.features import FeatureSpec, build_spec
from cascade.reload import Reloader
from cascade.server import ServerSettings, invalid_argument, read_candidates, run_forever, serve
from cascade.telemetry import ModelMetrics, new_registry
from cascade.v1 import rank_pb2, rank_pb2_grpc
from services.rank.scorer import COMPONENT, RankScorer, ScorerSettings

log = logging.getLogger(__name__)
STAGE = "rank"
SERVICE = rank_pb2.DESCRIPTOR.services_by_name["Rank"].full_name
MIN_TIME_S = 0.002  # less than this left before the deadline: scoring would be wasted work


@dataclass(frozen=True)
class RankSettings:
    server: ServerSettings = field(
        default_factory=lambda: ServerSettings(port=50053, metrics_port=9153)
    )
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    data_dir: Path = Path("data")  # the dataset itself is the one the bundle was trained on
    artifacts: Path = Path("artifacts")
    bundle: str = "current"  # a version folder under artifacts, or the published "current"
    # The online store: "memory" (this process, rebuilt from the event log at start) or
    # "redis://host:port/db" (shared by every replica of every stage).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    max_candidates: int = 2000  # longer lists are INVALID_ARGUMENT

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")


class RankService(rank_pb2_grpc.RankServicer):
    def __init__(self, scorer: RankScorer, max_candidates: int, metrics: ModelMetrics):
        self.scorer, self.max_candidates, self.metrics = scorer, max_candidates, metrics
        metrics.set_model_version(scorer.version)

    def swap(self, scorer: RankScorer) -> str:
        """Serves `scorer` from the next request on (hot reload); returns its version."""
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
            request.user.user_id, candidates.item_ids, recent, candidates.channel_masks
        )
        self.metrics.inference.observe(time.perf_counter() - started)
        order = np.argsort(-fused, kind="stable")
        if request.count:
            order = order[: request.count]
        kept = candidates.take(order)
        to_proto(kept.item_ids, fused[order], kept.channel_masks, out=response.candidates)
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
    return RankScorer.from_bundle(bundle, store, settings.scorer)


def add_servicers(service: RankService):
    def add(server: grpc.Server) -> list[str]:
        rank_pb2_grpc.add_RankServicer_to_server(service, server)
        return [SERVICE]

    return add


def reloader(settings: RankSettings, service: RankService) -> Reloader:
    return Reloader.for_service(STAGE, settings, lambda: load_scorer(settings), service.swap)


def start(settings: RankSettings, scorer: RankScorer | None = None, registry=None):
    """A running Rank server (tests pass a ready scorer)."""
    registry = new_registry() if registry is None else registry
    scorer = load_scorer(settings) if scorer is None else scorer
    service = RankService(scorer, settings.max_candidates, ModelMetrics(STAGE, registry))
    return serve(
        STAGE, add_servicers(service), settings.server, registry,
        reloader=reloader(settings, service),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rank gRPC service")
    parser.add_argument("--config", type=Path, default=None, help="JSON or TOML settings file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = load_settings(RankSettings, args.config, env_prefix="CASCADE_RANK_")
        scorer = load_scorer(settings)
    except (SettingsError, ArtifactError, DataError) as error:
        print(f"rank: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    registry = new_registry()
    service = RankService(scorer, settings.max_candidates, ModelMetrics(STAGE, registry))
    log.info("rank: model %s, tasks %s", scorer.version, ", ".join(scorer.tasks))
    run_forever(
        STAGE, add_servicers(service), settings.server, registry,
        reloader=reloader(settings, service),
    )  # fmt: skip


if __name__ == "__main__":
    main()
