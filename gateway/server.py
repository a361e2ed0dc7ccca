"""The Gateway gRPC service: the public Recommend / Feedback API in front of the four stages.

    python -m gateway.server [--config gateway.toml]   # env: CASCADE_GATEWAY_*, e.g.
    CASCADE_GATEWAY_API_TOKEN, CASCADE_GATEWAY_RANK_TARGET, CASCADE_GATEWAY_SERVER_PORT

Start-up reads the bundle's dataset name, loads the catalog (Feedback validation, creators for the
local creator cap) and the popular cache (recall's fallback). Per Recommend: validate, attach the
user's online events, run the cascade under the deadline budget (pipeline.py). Per Feedback:
validate each event, record the valid ones here and forward them to recall's online store.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from cascade.artifacts import ArtifactError, Bundle
from cascade.client import ClientSettings, make_channel
from cascade.config import SettingsError, load_settings
from cascade.data import DataError, load_dataset
from cascade.data.split import split_dataset
from cascade.events import check_events
from cascade.features import build_spec
from cascade.reload import Reloader
from cascade.server import RunningServer, ServerSettings, invalid_argument, run_forever, serve
from cascade.telemetry import new_registry, set_model_info
from cascade.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from gateway.admission import Admission, AdmissionSettings, mark_shrunk, shrink
from gateway.auth import TokenAuth
from gateway.online import OnlineEvents
from gateway.pipeline import STAGES, Budget, Cascade, Funnel, GatewayMetrics

log = logging.getLogger(__name__)
STAGE = "gateway"
SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerSettings = field(
        # The gateway mostly waits on its stages: 16 threads keep a paused stage (each call
        # waiting out its budget) from starving requests that could be answered.
        default_factory=lambda: ServerSettings(
            port=50050, metrics_port=9150, max_message_bytes=1024 * 1024, max_workers=16
        )
    )
    recall_target: str = "127.0.0.1:50051"
    prerank_target: str = "127.0.0.1:50052"
    rank_target: str = "127.0.0.1:50053"
    rerank_target: str = "127.0.0.1:50054"
    artifacts: Path = Path("artifacts")
    bundle: str = "current"
    data_dir: Path = Path("data")
    recall_count: int = 2000  # the funnel: recall -> prerank -> rank -> count
    prerank_count: int = 500
    rank_count: int = 100
    default_count: int = 10  # when the request's count is 0
    max_count: int = 100
    default_deadline_s: float = 0.25  # the budget when the client sets no deadline
    max_deadline_s: float = 2.0  # a longer client deadline is cut to this
    safety_margin_s: float = 0.01  # kept back for answering; at most a fifth of the budget
    # Shares of the budget per stage (what is left is re-split among the stages still to run).
    recall_share: float = 0.3
    prerank_share: float = 0.15
    rank_share: float = 0.4
    rerank_share: float = 0.15
    max_per_creator: int = 2  # creator cap of the local rerank fallback (rerank's own default)
    breaker_failures: int = 5  # a stage failing this often in a row is skipped; 0 = never
    breaker_cooldown_s: float = 0.5  # ... for this long, then one call probes it
    max_context_chars: int = 64  # platform, locale, surface
    max_extras: int = 16  # context.extras entries
    max_extra_chars: int = 256  # per extras key and value
    max_feedback_events: int = 1000  # larger Feedback batches are INVALID_ARGUMENT
    record_timeout_s: float = 0.2  # forwarding Feedback to recall
    max_online_users: int = 100_000  # users whose online events the gateway remembers
    api_token: str = ""  # empty: auth off (local demo); else callers must send it
    # Concurrency limit, queue-time shedding and the funnel's quality factor (gateway/admission.py).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)

    def __post_init__(self) -> None:
        if not 0 < self.default_count <= self.max_count:
            raise ValueError("need 0 < default_count <= max_count")
        if min(self.recall_count, self.prerank_count, self.rank_count) < 1:
            raise ValueError("recall_count, prerank_count and rank_count must be >= 1")
        if not 0 < self.default_deadline_s <= self.max_deadline_s:
            raise ValueError("need 0 < default_deadline_s <= max_deadline_s")
        if min(self.shares().values()) <= 0:
            raise ValueError("every stage share must be > 0")
        if self.safety_margin_s < 0 or self.record_timeout_s <= 0:
            raise ValueError("safety_margin_s must be >= 0 and record_timeout_s > 0")
        if self.breaker_failures < 0 or self.breaker_cooldown_s <= 0:
            raise ValueError("breaker_failures must be >= 0 and breaker_cooldown_s > 0")

    def shares(self) -> dict[str, float]:
        return {stage: getattr(self, f"{stage}_share") for stage in STAGES}

    def targets(self) -> dict[str, str]:
        return {stage: getattr(self, f"{stage}_target") for stage in STAGES}


@dataclass
class Catalog:
    """What the gateway knows of the items: which exist, their creators, the popular ones."""

    known: np.ndarray  # (n_items + 1,) bool by item id
    creators: np.ndarray  # (n_items + 1,) int64 creator id by item id
    popular: np.ndarray  # item ids, most popular first
    history_length: int
    version: str = ""  # the bundle's (cascade_model_info)

    def known_items(self, item_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, dtype=np.int64)
        inside = (ids > 0) & (ids < len(self.known))
        return inside & self.known[np.where(inside, ids, 0)]


def load_catalog(settings: GatewaySettings) -> Catalog:
    """The bundle's dataset and the popular cache (recall's trending table, or play counts of the
    training period when the bundle has none)."""
    bundle = Bundle.open(settings.artifacts, settings.bundle)
    dataset = load_dataset(bundle.component("recall")["dataset"], settings.data_dir)
    items = dataset.items
    known = np.zeros(dataset.n_items + 1, dtype=bool)
    known[items["item_id"]] = True
    creators = np.zeros(dataset.n_items + 1, dtype=np.int64)
    creators[items["item_id"]] = items["creator_id"]
    try:
        popular = bundle.load_npz("recall", "popular.npz")["item_ids"]
    except (ArtifactError, KeyError):
        plays = split_dataset(dataset).train_interactions["item_id"]
        counts = np.bincount(plays, minlength=len(known))
        popular = np.flatnonzero(counts)[np.argsort(-counts[counts > 0], kind="stable")]
    popular = np.asarray(popular, dtype=np.int64)[: settings.recall_count]
    return Catalog(known, creators, popular, build_spec(dataset).history_length, bundle.version)


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        catalog: Catalog,
        registry: CollectorRegistry,
        admission: Admission | None = None,
    ):
        self.settings = settings
        self.admission = admission  # None: every call gets the whole funnel
        self.catalog = catalog
        self.registry = registry
        self.metrics = GatewayMetrics(registry)
        set_model_info(registry, STAGE, catalog.version)
        self.online = OnlineEvents(catalog.history_length, settings.max_online_users)
        # Stage calls retry UNAVAILABLE inside their deadline (all are idempotent); Record is
        # not retried (a duplicate would count an event twice).
        client = ClientSettings(timeout_s=settings.max_deadline_s)
        self.channels = {s: make_channel(t, client) for s, t in settings.targets().items()}
        self.record_channel = make_channel(settings.recall_target, client, retry_methods=())
        funnel = Funnel(
            settings.recall_count, settings.prerank_count, settings.rank_count,
            settings.max_per_creator, settings.breaker_failures, settings.breaker_cooldown_s,
        )  # fmt: skip
        self.cascade = Cascade(
            self.channels, funnel, catalog.popular, catalog.creators, self.metrics
        )
        self._record = self.record_channel.unary_unary(
            "/cascade.v1.Recall/Record",
            request_serializer=gateway_pb2.FeedbackRequest.SerializeToString,
            response_deserializer=gateway_pb2.FeedbackResponse.FromString,
        )

    def swap(self, catalog: Catalog) -> str:
        """Validates Feedback against, and falls back on, a newly published bundle's catalog
        (hot reload); returns its version."""
        self.catalog = catalog
        self.cascade.popular, self.cascade.creators = catalog.popular, catalog.creators
        set_model_info(self.registry, STAGE, catalog.version)
        return catalog.version

    def Recommend(self, request: gateway_pb2.RecommendRequest, context: grpc.ServicerContext):
        settings = self.settings
        if request.user_id < 0:
            invalid_argument(
                context, "user_id", f"must be >= 0 (0 = anonymous), got {request.user_id}"
            )
        if request.count > settings.max_count:
            invalid_argument(
                context,
                "count",
                f"{request.count} is above the maximum "
                f"{settings.max_count} (0 = the default {settings.default_count})",
            )
        self._check_context(request.context, context)
        count = request.count or settings.default_count
        budget = Budget(self._budget_s(context), settings.shares())
        user = common_pb2.UserContext(
            user_id=request.user_id,
            recent_item_ids=self.online.recent(request.user_id),
            context=request.context,
        )
        q, reason = 1.0, ""
        if self.admission is not None:
            q, reason = self.admission.funnel_factor(budget.left(), context.invocation_metadata())
        funnel = shrink(self.cascade.funnel, q, count)
        response = self.cascade.run(user, count, budget, request.debug, funnel)
        if reason:
            mark_shrunk(response, q, reason, self.admission.metrics)
        response.request_id = uuid.uuid4().hex
        return response

    def Feedback(self, request: gateway_pb2.FeedbackRequest, context: grpc.ServicerContext):
        n = len(request.events)
        if n > self.settings.max_feedback_events:
            invalid_argument(
                context,
                "events",
                f"{n} events in one call; at most {self.settings.max_feedback_events}",
            )
        checked = check_events(request.events, self.catalog.known_items)
        self.online.record(checked.user_ids, checked.item_ids, checked.names)
        if len(checked.indices):
            forward = gateway_pb2.FeedbackRequest(
                events=[request.events[int(i)] for i in checked.indices]
            )
            try:
                self._record(forward, timeout=self.settings.record_timeout_s)
            except grpc.RpcError as error:  # recall's counters lag; the answers still reflect it
                self.metrics.record_failures.inc()
                log.warning("gateway: recall Record failed: %s", getattr(error, "code", str)())
        self.metrics.feedback.labels("accepted").inc(len(checked.indices))
        self.metrics.feedback.labels("rejected").inc(len(checked.rejected))
        response = gateway_pb2.FeedbackResponse(accepted=len(checked.indices))
        for index, reason in checked.rejected:
            response.rejected.add(index=index, reason=reason)
        return response

    def _budget_s(self, context: grpc.ServicerContext) -> float:
        """The client's remaining time (or the default), less the safety margin for answering."""
        remaining = context.time_remaining()
        if remaining is None:
            total = self.settings.default_deadline_s
        else:
            total = min(remaining, self.settings.max_deadline_s)
        return total - min(self.settings.safety_margin_s, total / 5)

    def _check_context(self, request_context: common_pb2.RequestContext, context) -> None:
        limit = self.settings.max_context_chars
        for name in ("platform", "locale", "surface"):
            value = getattr(request_context, name)
            if len(value) > limit:
                invalid_argument(
                    context, f"context.{name}", f"{len(value)} characters; at most {limit}"
                )
        extras = request_context.extras
        if len(extras) > self.settings.max_extras:
            invalid_argument(
                context,
                "context.extras",
                f"{len(extras)} entries; at most {self.settings.max_extras}",
            )
        longest = max((max(len(k), len(v)) for k, v in extras.items()), default=0)
        if longest > self.settings.max_extra_chars:
            invalid_argument(
                context,
                "context.extras",
                f"a key or value has {longest} characters; at most {self.settings.max_extra_chars}",
            )

    def close(self) -> None:
        for channel in (*self.channels.values(), self.record_channel):
            channel.close()
        if self.admission is not None:
            self.admission.close()


def _servicers(service: GatewayService):
    def add(server: grpc.Server) -> list[str]:
        gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
        return [SERVICE]

    return add


def _interceptors(settings: GatewaySettings, admission: Admission) -> list[grpc.ServerInterceptor]:
    # Admission first: it decides before the call waits for a worker thread.
    return [admission] + ([TokenAuth(settings.api_token)] if settings.api_token else [])


def reloader(settings: GatewaySettings, service: GatewayService) -> Reloader:
    return Reloader.for_service(STAGE, settings, lambda: load_catalog(settings), service.swap)


def start(settings: GatewaySettings, registry: CollectorRegistry | None = None) -> RunningServer:
    """A running gateway (tests); its service is `running.service` for closing channels."""
    registry = new_registry() if registry is None else registry
    admission = Admission(settings.admission, registry)
    service = GatewayService(settings, load_catalog(settings), registry, admission)
    running = serve(
        STAGE, _servicers(service), settings.server, registry,
        _interceptors(settings, admission), reloader(settings, service),
    )  # fmt: skip
    running.service = service  # type: ignore[attr-defined]
    return running


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="JSON or TOML settings file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(GatewaySettings, args.config, env_prefix="CASCADE_GATEWAY_")
        catalog = load_catalog(settings)
    except (SettingsError, ArtifactError, DataError) as error:
        log.error("gateway: refusing to start: %s", error)
        return 2
    registry = new_registry()
    admission = Admission(settings.admission, registry)
    service = GatewayService(settings, catalog, registry, admission)
    log.info(
        "gateway: stages %s; auth %s", settings.targets(), "on" if settings.api_token else "off"
    )
    try:
        run_forever(
            STAGE, _servicers(service), settings.server, registry,
            _interceptors(settings, admission), reloader(settings, service),
        )  # fmt: skip
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
