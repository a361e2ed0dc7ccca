"""The Recall gRPC service: a user context in, about 2,000 merged candidates out.

Start-up loads the published bundle's "recall" component and the feature store, and refuses to
start (ArtifactError naming the file) when an artifact is missing, damaged or built for another
feature spec or catalog. Per request: validate, build the RecallContext (request ids + stored
history), run the channels under their budgets (merge.py), answer with per-channel reports.

    python -m services.recall.server [--config recall.toml]   # env: CASCADE_RECALL_*
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from cascade.artifacts import ArtifactError, Bundle
from cascade.backends import open_store
from cascade.candidates import CHANNELS, to_proto
from cascade.catalog_fold import load_bundle_uploads
from cascade.data.schema import load
from cascade.data.split import split_dataset
from cascade.events import check_events
from cascade.feature_store import EVENTS, FeatureStore, StoreLimits, check_store_setting
from cascade.features import DEFAULT_WIDTHS, FeatureSpec, build_spec
from cascade.live_catalog import CatalogUpdatesService, replay_catalog
from cascade.server import ServerSettings, StageServer, invalid_argument
from cascade.telemetry import ModelMetrics
from cascade.v1 import catalog_pb2_grpc, common_pb2, gateway_pb2, recall_pb2, recall_pb2_grpc
from cascade.warmup import WARM_UP_USER, WarmUp
from services.recall.channels import Channel, RecallContext
from services.recall.channels.fresh import FreshChannel
from services.recall.channels.item_cf import ItemCFChannel
from services.recall.channels.mf import INFO_KEY as MF_INFO
from services.recall.channels.mf import MFChannel
from services.recall.channels.popular import PopularChannel
from services.recall.channels.profile import ProfileChannel
from services.recall.channels.social import SocialChannel
from services.recall.channels.two_tower import TwoTowerChannel, TwoTowerSettings
from services.recall.merge import ChannelBudget, ChannelMetrics, Merger
from services.recall.tables import COMPONENT, load_tables

log = logging.getLogger(__name__)
STAGE = "recall"
SERVICE = recall_pb2.DESCRIPTOR.services_by_name["Recall"].full_name
DAY = 86_400
CHANNEL_NAMES = tuple(CHANNELS.values())  # the names channel_quotas may use


def _budget(quota: float, budget_ms: float = 30.0) -> ChannelBudget:
    return field(default_factory=lambda: ChannelBudget(quota=quota, budget_ms=budget_ms))


@dataclass(frozen=True)
class RecallSettings:
    server: ServerSettings = field(default_factory=lambda: ServerSettings.of("recall"))
    artifacts: Path = Path("artifacts")  # where bundles live
    bundle: str = "current"  # the bundle under artifacts/ it serves
    # The online store: "memory" (this process, rebuilt from the event log at start) or
    # "redis://host:port/db" (shared by every replica of every stage).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # The event log the embedded store replays at start (cascade.eventlog: "file:/dir" or
    # "redis://..."), so a restart forgets no acknowledged event; "" = none.
    event_log: str = ""
    data_dir: Path = Path("data")  # where datasets live: the bundle's own is read
    default_count: int = 2000  # when the request's count is 0
    max_count: int = 5000  # a larger request count is INVALID_ARGUMENT
    max_recent_items: int = 500  # longest request.user.recent_item_ids accepted
    max_record_events: int = 1000  # largest Record batch accepted
    clock: str = "data"  # request time 0 = "data": the log's last time + uptime; "wall": now
    overfetch: float = 1.5  # each channel is asked for quota x count x this (merge drops some)
    channel_workers: int = 0  # 0: channels run in the request's thread (see Merger)
    fresh_window_s: int = 7 * DAY  # fresh channel: uploads younger than this (seconds)
    # Priority order of the merge is the order below; quotas sum to 1 (popular also fills gaps).
    mf: ChannelBudget = _budget(0.3)
    two_tower: ChannelBudget = _budget(0.25, 40.0)
    item_cf: ChannelBudget = _budget(0.15)
    profile: ChannelBudget = _budget(0.1)
    social: ChannelBudget = _budget(0.1)
    fresh: ChannelBudget = _budget(0.05)
    popular: ChannelBudget = _budget(0.05)
    two_tower_model: TwoTowerSettings = field(default_factory=TwoTowerSettings)

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        if not 0 < self.default_count <= self.max_count:
            raise ValueError("need 0 < default_count <= max_count")
        if self.clock not in ("data", "wall"):
            raise ValueError(f"clock must be 'data' or 'wall', got {self.clock!r}")

    def budgets(self) -> dict[str, ChannelBudget]:
        names = ("mf", "two_tower", "item_cf", "profile", "social", "fresh", "popular")
        return {name: getattr(self, name) for name in names}


@dataclass
class RecallState:
    """What serving holds: the store, the channels in priority order and the bundle's facts."""

    store: FeatureStore
    channels: list[Channel]
    version: str
    as_of: int  # last timestamp of the training log


def open_recall(settings: RecallSettings, keep: RecallState | None = None) -> RecallState:
    """Loads bundle, dataset and store; ArtifactError names whatever does not fit. On a hot
    reload, `keep` (the state being replaced) lends its store when the new bundle was built on the
    same data and features, so the events Feedback recorded since start stay."""
    bundle = Bundle.open(settings.artifacts, settings.bundle)
    info = bundle.component(COMPONENT)
    dataset = load(Path(settings.data_dir) / info["dataset"])
    spec = check_spec(info, dataset, bundle)
    tables = load_tables(bundle)
    as_of = int(tables["popular"]["as_of"])
    if keep is not None and (keep.store.spec.fingerprint, keep.as_of) == (spec.fingerprint, as_of):
        store = keep.store
    else:
        store = open_store(
            settings.store, dataset, spec, split_dataset(dataset), settings.store_limits
        )
        load_bundle_uploads(store, bundle)
        if settings.event_log:
            replay_event_log(store, settings.event_log, events=settings.store == "memory")
    # A retrained bundle also covers the items uploaded since the dataset (cascade/catalog_fold.py).
    covered = len(tables["item_cf"]["ptr"]) - 1
    if covered < dataset.n_items:
        raise ArtifactError(
            f"{bundle.folder}/{COMPONENT}/item_cf.npz covers {covered}"
            f" item ids but dataset {dataset.name} has {dataset.n_items}: rebuild the bundle"
        )
    channels = build_channels(bundle, tables, store, settings)
    return RecallState(store, channels, bundle.version, as_of)


def replay_event_log(store: FeatureStore, uri: str, events: bool = True) -> None:
    """Rebuilds the store's living catalogue (uploads, follow changes: in-process with either
    store) and, for the embedded store (`events`), its online state from every event the log
    acknowledged."""
    from cascade.backends import open_event_log  # the durable log of Feedback events

    logged = open_event_log(uri, read_only=True)  # the gateway is the log's one writer
    try:
        uploads, follows = replay_catalog(store, logged)  # first: events may name uploads
        applied = store.rebuild(logged.read_events()) if events else 0
    finally:
        logged.close()
    log.info(
        "recall: replayed %d uploads, %d follow changes and %d events from %s",
        uploads,
        follows,
        applied,
        uri,
    )


def check_spec(info: dict, dataset, bundle: Bundle) -> FeatureSpec:
    """The bundle's feature spec, verified against the data the store is built from."""
    where = f"artifact {bundle.folder}/{COMPONENT} (feature_spec)"
    if "feature_spec" not in info:
        raise ArtifactError(f"{where}: the component records no feature spec")
    spec = FeatureSpec.from_json(info["feature_spec"])
    widths = {f.name: f.width for f in spec.fields if f.name in DEFAULT_WIDTHS}
    try:
        spec.check_matches(build_spec(dataset, widths), where)
    except ValueError as error:
        raise ArtifactError(f"{error}; the data in use differs from training: rebuild") from None
    if info.get("feature_spec_fingerprint") != spec.fingerprint:
        raise ArtifactError(f"{where}: fingerprint does not match the recorded spec")
    return spec


def build_channels(
    bundle: Bundle | None, tables: dict, store: FeatureStore, settings: RecallSettings
) -> list[Channel]:
    """The channels in merge priority order. MF and two-tower come from the bundle when
    enabled."""
    channels: list[Channel] = []
    if settings.mf.enabled and bundle is not None:
        if MF_INFO not in bundle.component(COMPONENT):
            raise ArtifactError(
                f"{bundle.folder}/{COMPONENT}: no MF model in the bundle (built before the MF "
                "channel?); rebuild it, or set CASCADE_RECALL_MF_ENABLED=false to serve without it"
            )
        channels.append(MFChannel.from_bundle(bundle, store, settings.two_tower_model.max_k))
    if settings.two_tower.enabled and bundle is not None:
        if "two_tower" not in bundle.component(COMPONENT):
            raise ArtifactError(
                f"{bundle.folder}/{COMPONENT}: no two-tower model in the bundle (built with "
                "--no-two-tower?); set CASCADE_RECALL_TWO_TOWER_ENABLED=false to serve without it"
            )
        try:
            channels.append(TwoTowerChannel.from_bundle(bundle, store, settings.two_tower_model))
        except ValueError as error:  # a spec mismatch between the towers and the store
            raise ArtifactError(str(error)) from None
    channels += [
        ItemCFChannel(tables["item_cf"]),
        ProfileChannel(tables["profile"], store),
        SocialChannel(tables["social"], store),
        FreshChannel(tables["fresh"], store, window_s=settings.fresh_window_s),
        PopularChannel(tables["popular"]),
    ]
    return channels


class RecallService(recall_pb2_grpc.RecallServicer):
    def __init__(self, state: RecallState, settings: RecallSettings, registry: CollectorRegistry):
        self.settings = settings
        self.metrics = ModelMetrics("recall", registry)  # model time: channels + merge
        self.channel_metrics = ChannelMetrics(registry)
        # What the fresh-content bandit reads, summed over items: replicas on one shared store
        # agree on it (within the counters snapshot's refresh period).
        totals = Gauge(
            "cascade_store_item_events",
            "Item event counters the store answers, summed over the catalog, by event.",
            ["event"],
            registry=registry,
        )
        for event in EVENTS:
            totals.labels(event).set_function(functools.partial(self._counter_total, event))
        self._started = time.time()
        # Uploads and follow changes the gateway forwards (the CatalogUpdates service).
        self.updates = CatalogUpdatesService(lambda: self.state.store, settings.max_record_events)
        self.swap(state)

    def _counter_total(self, event: str) -> float:
        """The store's counter of `event` summed over the catalog (read at each scrape)."""
        return self.state.store.counter_totals()[event]

    def swap(self, state: RecallState) -> str:
        """Serves `state` from the next request on (at start and on hot reload). With a channel
        pool (channel_workers > 0) the old merger's threads exit once in-flight requests drop it
        (ThreadPoolExecutor's workers stop when it is garbage collected)."""
        merger = Merger(
            state.channels,
            self.settings.budgets(),
            overfetch=self.settings.overfetch,
            max_workers=self.settings.channel_workers,
            metrics=self.channel_metrics,
        )
        if hasattr(self, "serving") and state.store is not self.state.store:
            self.updates.reapply(state.store)  # a new store: what was uploaded since start
        self.serving = (state, merger)  # one reference: a request reads both at once
        self.metrics.set_model_version(state.version)
        return state.version

    @property
    def state(self) -> RecallState:
        return self.serving[0]

    @property
    def merger(self) -> Merger:
        return self.serving[1]

    def Recall(self, request: recall_pb2.RecallRequest, context: grpc.ServicerContext):
        count = request.count or self.settings.default_count
        if count > self.settings.max_count:
            invalid_argument(
                context, "count", f"{count} exceeds the maximum {self.settings.max_count}"
            )
        quotas = check_quotas(request.channel_quotas, context)
        state, merger = self.serving  # one version for the whole request
        recall_context = self._context(request.user, context)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before recall ran")
        deadline = None if remaining is None else time.perf_counter() + remaining
        consumed = np.union1d(
            state.store.consumed(recall_context.user_id), recall_context.recent_items
        )
        recall_context = dataclasses.replace(recall_context, consumed=consumed)
        started = time.perf_counter()
        result = merger.recall(recall_context, count, consumed, deadline, quotas)
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.candidates_out.inc(len(result.candidates.item_ids))
        response = recall_pb2.RecallResponse(model_version=state.version)
        to_proto(*result.candidates, out=response.candidates)
        for report in result.reports:
            response.channels.add(
                channel=common_pb2.Channel.Value(f"CHANNEL_{report.name.upper()}"),
                returned=report.returned,
                kept=report.kept,
                latency_ms=report.latency_ms,
                status=report.status,
            )
        return response

    def Record(self, request: gateway_pb2.FeedbackRequest, context: grpc.ServicerContext):
        """Writes valid events into the store (history, consumed set, fresh counters); invalid
        ones are reported back, never written."""
        if len(request.events) > self.settings.max_record_events:
            invalid_argument(
                context,
                "events",
                f"{len(request.events)} events; at most {self.settings.max_record_events}",
            )
        checked = check_events(request.events, self.state.store.known_items)
        if len(checked.indices):
            self.state.store.record(checked.user_ids, checked.item_ids, checked.ts, checked.names)
        response = gateway_pb2.FeedbackResponse(accepted=len(checked.indices))
        for index, reason in checked.rejected:
            response.rejected.add(index=index, reason=reason)
        return response

    def _context(
        self, user: common_pb2.UserContext, context: grpc.ServicerContext
    ) -> RecallContext:
        """Validates the user context; an unknown user is fine (cold path), bad values are not."""
        if user.user_id < 0:
            invalid_argument(
                context, "user.user_id", f"must be >= 0 (0 = anonymous), got {user.user_id}"
            )
        if user.request_time_ms < 0:
            invalid_argument(context, "user.request_time_ms", "must be >= 0 (0 = now)")
        recent = np.asarray(user.recent_item_ids, dtype=np.int64)
        if len(recent) > self.settings.max_recent_items:
            invalid_argument(
                context,
                "user.recent_item_ids",
                f"{len(recent)} ids; at most {self.settings.max_recent_items} accepted",
            )
        if (recent <= 0).any():
            invalid_argument(context, "user.recent_item_ids", "item ids must be > 0")
        store = self.state.store
        recent = recent[store.known_items(recent)]  # items the catalog does not know yet: ignored
        stored = store.history(np.array([user.user_id]))[0]
        stored = stored[stored > 0]
        merged = np.concatenate([recent, stored])
        _, first = np.unique(merged, return_index=True)
        recent_items = merged[np.sort(first)]  # newest first, each item once
        known = bool(len(recent_items)) or bool(
            store.user_features(np.array([user.user_id]))["user_id"][0]
        )
        return RecallContext(int(user.user_id), recent_items, self._request_ts(user), known)

    def _request_ts(self, user: common_pb2.UserContext) -> int:
        if user.request_time_ms:
            return user.request_time_ms // 1000
        if self.settings.clock == "data":  # a replayed log: "now" continues from its last event
            return self.state.as_of + int(time.time() - self._started)
        return int(time.time())


def check_quotas(quotas, context: grpc.ServicerContext) -> dict[str, float]:
    """A request's channel_quotas: channel short names, each share in [0, 1]."""
    out = {}
    for name, share in sorted(quotas.items()):
        if name not in CHANNEL_NAMES:
            invalid_argument(
                context,
                "channel_quotas",
                f"unknown channel {name!r}; one of {', '.join(CHANNEL_NAMES)}",
            )
        if not 0.0 <= share <= 1.0:  # NaN fails too
            invalid_argument(context, f"channel_quotas[{name}]", f"a share in [0, 1], got {share}")
        out[name] = float(share)
    return out


def new_service(
    settings: RecallSettings, state: RecallState, registry: CollectorRegistry
) -> RecallService:
    return RecallService(state, settings, registry)


def reload_state(settings: RecallSettings, service: RecallService) -> RecallState:
    """A hot reload keeps the online store when the new bundle was built on the same data."""
    return open_recall(settings, keep=service.state)


def register(service: RecallService, server: grpc.Server) -> None:
    recall_pb2_grpc.add_RecallServicer_to_server(service, server)
    catalog_pb2_grpc.add_CatalogUpdatesServicer_to_server(service.updates, server)


WARM_UP = common_pb2.UserContext(user_id=WARM_UP_USER)

SERVER = StageServer(
    name=STAGE,
    settings=RecallSettings,
    load=open_recall,
    service=new_service,
    register=register,
    service_name=SERVICE,
    reload=reload_state,
    warm_up=WarmUp("Recall", lambda: recall_pb2.RecallRequest(user=WARM_UP)),  # default count
)
start, main = SERVER.start, SERVER.main

if __name__ == "__main__":
    sys.exit(main())
