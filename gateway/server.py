"""The Gateway gRPC service: the public Recommend / Feedback API in front of the four stages.

    python -m gateway.server [--config gateway.toml]   # env: CASCADE_GATEWAY_*, e.g.
    CASCADE_GATEWAY_API_TOKEN, CASCADE_GATEWAY_RANK_TARGET, CASCADE_GATEWAY_SERVER_PORT

Start-up reads the bundle's dataset name, loads the catalog (Feedback validation, creators for the
local creator cap) and the popular cache (recall's fallback). Per Recommend: validate, attach the
user's online events, run the cascade under the deadline budget (pipeline.py), answer, then log
the impression (impressions.py, off the critical path). Per Feedback: validate each event, map
user ids to dense ids (gateway/ids.py), append to the event log (durable before answering), then
apply them to the online store: with the embedded store, record the new ones here and forward
them to recall's Record; with Redis (`store = "redis://..."`), write them once to the shared
store, which every stage replica reads (a write that fails is UNAVAILABLE; the retry is safe).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry

from cascade.artifacts import ArtifactError, Bundle
from cascade.backends import open_event_log
from cascade.client import ClientSettings
from cascade.config import Secret
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.eventlog import EVENTS, EventLogError, LogSettings
from cascade.events import EVENT_NAMES, check_events
from cascade.feature_store import StoreLimits, check_store_setting
from cascade.features import build_spec
from cascade.ids import IdSpaceFull
from cascade.server import ServerSettings, StageServer, invalid_argument, resource_exhausted
from cascade.telemetry import set_model_info
from cascade.topology import spec
from cascade.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, recall_pb2_grpc
from gateway.admission import Admission, AdmissionSettings, mark_shrunk, shrink
from gateway.arms import assign, parse_arms
from gateway.auth import TokenAuth
from gateway.ids import GatewayIds, IdProblem, merge_rejections
from gateway.impressions import ImpressionWriter, Shown
from gateway.online import OnlineEvents
from gateway.pipeline import STAGES, Budget, Cascade, Funnel, GatewayMetrics, Served
from gateway.replicas import PICKS, ReplicaMetrics, ReplicaPool, channel_factory
from gateway.request_time import caller_time_ms
from gateway.shadow import Shadow
from gateway.uploads import CatalogUpdates
from gateway.uploads import restore as restore_uploads

if TYPE_CHECKING:
    from cascade.redis_store import RedisState

log = logging.getLogger(__name__)
STAGE = "gateway"
CLOCKS = ("data", "wall", "caller")  # the `clock` setting
NO_ARM = "none"  # the arm label of answers when no arms are configured
SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerSettings = field(
        # The gateway mostly waits on its stages: 16 threads keep a paused stage (each call
        # waiting out its budget) from starving requests that could be answered.
        default_factory=lambda: ServerSettings.of(
            "gateway", max_message_bytes=1024 * 1024, max_workers=16
        )
    )
    # A stage's replicas: host:port, a comma list of them, or a DNS name resolved to all its
    # addresses (dns:///rank.cascade.svc.cluster.local:50053, a headless Service).
    recall_target: str = spec("recall").target
    prerank_target: str = spec("prerank").target
    rank_target: str = spec("rank").target
    rerank_target: str = spec("rerank").target
    resolve_interval_s: float = 10.0  # resolve the targets again (new pods, gone ones)
    probe_timeout_s: float = 0.25  # health check of an ejected replica before taking it back
    replica_pick: str = "least_in_flight"  # or "round_robin" (blind to a hung replica's queue)
    # Mutual TLS to the stages: their CA, and the gateway's client certificate (CN
    # cascade-gateway, the one caller the stages accept). Without: plaintext.
    stage_tls_ca: Path | None = None
    stage_tls_cert: Path | None = None
    stage_tls_key: Path | None = None
    stage_token: Secret = Secret("")  # without mutual TLS: the stages' caller token
    artifacts: Path = Path("artifacts")  # where bundles live
    bundle: str = "current"  # the bundle under artifacts/ it serves (its fallbacks, catalog)
    data_dir: Path = Path("data")  # where datasets live: the bundle's own is read
    recall_count: int = 2000  # the funnel: recall -> prerank -> rank -> count
    prerank_count: int = 500  # candidates pre-rank keeps for rank
    # Rank keeps 50 for rerank: 100 served less true engagement on the synthetic world's
    # validation users (`make bench-funnel-tuning`, results/cascade/funnel_tuning.md).
    rank_count: int = 50
    default_count: int = 10  # when the request's count is 0
    max_count: int = 100  # a larger request count is INVALID_ARGUMENT
    default_deadline_s: float = 0.25  # the budget when the client sets no deadline
    max_deadline_s: float = 2.0  # a longer client deadline is cut to this
    safety_margin_s: float = 0.01  # kept back for answering; at most a fifth of the budget
    # Shares of the budget per stage (what is left is re-split among the stages still to run).
    recall_share: float = 0.3
    prerank_share: float = 0.15
    rank_share: float = 0.4
    rerank_share: float = 0.15
    max_per_creator: int = 2  # creator cap of the local rerank fallback (rerank's own default)
    breaker_failures: int = 3  # a replica failing this often in a row is ejected; 0 = never
    breaker_cooldown_s: float = 0.5  # ... for this long, then a health check probes it
    max_context_chars: int = 64  # platform, locale, surface
    max_extras: int = 16  # context.extras entries
    max_extra_chars: int = 256  # per extras key and value
    max_feedback_events: int = 1000  # larger Feedback batches are INVALID_ARGUMENT
    record_timeout_s: float = 0.2  # forwarding Feedback to recall
    max_online_users: int = 100_000  # users whose online events the gateway remembers
    # The event log: file:DIR (embedded, segmented files) or redis://HOST:PORT/DB (shared).
    event_log: str = "file:state/eventlog"
    log: LogSettings = field(default_factory=LogSettings)  # fsync policy, segments, dedup window
    impression_queue: int = 10_000  # answers waiting for the impression writer; beyond: dropped
    # The writer waits this long after an answer for more to share its frame (fewer, larger
    # appends: `python -m bench.gateway_path`); the records are never on the answer's path.
    impression_linger_s: float = 0.05
    new_user_capacity: int = 1_000_000  # users first seen online, beyond the dataset's own
    new_item_capacity: int = 1_000_000  # items uploaded online (AddItems), beyond the dataset's
    api_token: Secret = Secret("")  # empty: auth off (local demo); else callers must send it
    # Refuse to start without api_token (compose and Kubernetes set it: auth off must be said).
    require_api_token: bool = False
    # The request time the gateway stamps once per request (and on events sent with time 0):
    # "wall" = now; "data" = the bundle's training log end + the gateway's uptime, for the
    # replayed datasets (ml-100k, synthetic), as recall's own "data" clock; "caller" = the time
    # the caller sends (gateway/request_time.py: simulations, replays), else "data".
    clock: str = "data"
    # The online store: "memory" (each stage its own; Feedback goes to recall's Record) or
    # "redis://host:port/db" (shared by every replica; the gateway writes each event once).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # Experiment arms (gateway/arms.py): a JSON list of {"name", "share", "overrides"}; a user's
    # arm is sha256(arm_salt:user key) against the shares. "" = no arms.
    arms: str = ""
    arm_salt: str = "cascade"
    # One of the arms' names: its ranking of every other arm's requests is logged, never shown
    # (gateway/shadow.py). "" = no shadow.
    shadow_arm: str = ""
    # Concurrency limit, queue-time shedding and the funnel's quality factor (gateway/admission.py).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        arm_names = [arm.name for arm in parse_arms(self.arms)]  # ValueError names the problem
        if self.shadow_arm and self.shadow_arm not in arm_names:
            raise ValueError(f"shadow_arm {self.shadow_arm!r} is not one of the arms {arm_names}")
        for name in ("api_token", "stage_token"):  # a plain str given in code becomes a Secret
            object.__setattr__(self, name, Secret(getattr(self, name)))
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
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if min(self.new_user_capacity, self.new_item_capacity) < 0 or self.impression_queue < 1:
            raise ValueError(
                "new_user_capacity and new_item_capacity must be >= 0, impression_queue >= 1"
            )
        if not 0 <= self.impression_linger_s <= 1:
            raise ValueError("impression_linger_s must be between 0 and 1 (seconds)")
        if self.breaker_failures < 0 or self.breaker_cooldown_s <= 0:
            raise ValueError("breaker_failures must be >= 0 and breaker_cooldown_s > 0")
        if self.require_api_token and not self.api_token:
            raise ValueError(
                "no API token: set CASCADE_GATEWAY_API_TOKEN, or set "
                "CASCADE_GATEWAY_REQUIRE_API_TOKEN=false to run without authentication"
            )
        if self.replica_pick not in PICKS:
            raise ValueError(f"replica_pick must be one of {PICKS}, got {self.replica_pick!r}")
        if self.resolve_interval_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("resolve_interval_s and probe_timeout_s must be > 0")
        if (self.stage_tls_cert is None) != (self.stage_tls_key is None):
            raise ValueError("stage_tls_cert and stage_tls_key go together")
        if self.stage_tls_cert is not None and self.stage_tls_ca is None:
            raise ValueError("stage_tls_cert (mutual TLS to the stages) needs stage_tls_ca")

    def stage_client(self) -> ClientSettings:
        """How the gateway dials a stage replica (its deadline is always the call's own)."""
        return ClientSettings(
            timeout_s=self.max_deadline_s,
            tls_ca=self.stage_tls_ca,
            tls_cert=self.stage_tls_cert,
            tls_key=self.stage_tls_key,
            caller_token=self.stage_token,
        )

    def stage_security(self) -> str:
        if self.stage_tls_cert is not None:
            return "mutual TLS"
        if self.stage_tls_ca is not None:
            return "TLS"
        return "plaintext" + (" with caller token" if self.stage_token else "")

    def shares(self) -> dict[str, float]:
        return {stage: getattr(self, f"{stage}_share") for stage in STAGES}

    def targets(self) -> dict[str, str]:
        return {stage: getattr(self, f"{stage}_target") for stage in STAGES}


class UserItems:
    """Each user's items from an interaction log as CSR (sorted per user): the fallbacks filter
    them, so a degraded answer never serves what the user already consumed."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray, n_users: int):
        order = np.lexsort((item_ids, user_ids))
        self.items = np.asarray(item_ids, dtype=np.int64)[order]
        self.ptr = np.searchsorted(np.asarray(user_ids)[order], np.arange(n_users + 2))

    def of(self, user_id: int) -> np.ndarray:
        if not 0 < user_id < len(self.ptr) - 1:
            return np.empty(0, dtype=np.int64)
        return self.items[self.ptr[user_id] : self.ptr[user_id + 1]]


@dataclass
class Catalog:
    """What the gateway knows of the items: which exist, their creators, the popular ones."""

    known: np.ndarray  # (n_items + 1,) bool by item id
    creators: np.ndarray  # (n_items + 1,) int64 creator id by item id
    popular: np.ndarray  # item ids, most popular first
    history_length: int
    version: str = ""  # the bundle's (cascade_model_info)
    dataset: str = ""
    ids: GatewayIds | None = None  # external user and item ids <-> dense ids (gateway/ids.py)
    as_of_s: int = 0  # the training log's last time (the "data" clock starts there)
    history: UserItems | None = None  # what each user consumed in the training log
    n_categories: int = 0  # category ids are 1..n_categories-1 (uploads are checked against it)
    # (n_items + 1,) upload time (s) by item id, 0 = unknown (exploration's "recent upload").
    uploaded: np.ndarray | None = None

    def consumed(self, user_id: int) -> np.ndarray:
        """The user's logged items (empty for unknown users or without a history)."""
        if self.history is None:
            return np.empty(0, dtype=np.int64)
        return self.history.of(user_id)

    def known_items(self, item_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, dtype=np.int64)
        known = self.known
        inside = (ids > 0) & (ids < len(known))
        return inside & known[np.where(inside, ids, 0)]

    def add(
        self, item_ids: np.ndarray, creator_ids: np.ndarray, upload_s: np.ndarray | None = None
    ) -> None:
        """Uploaded items (AddItems): the arrays are replaced whole, grown to the largest id."""
        if not len(item_ids):
            return
        n = max(len(self.known), int(np.max(item_ids)) + 1)
        known, creators = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
        uploaded = np.zeros(n, dtype=np.int64)
        known[: len(self.known)], creators[: len(self.creators)] = self.known, self.creators
        if self.uploaded is not None:
            uploaded[: len(self.uploaded)] = self.uploaded
        known[item_ids], creators[item_ids] = True, creator_ids
        if upload_s is not None:
            uploaded[item_ids] = upload_s
        self.creators, self.known, self.uploaded = creators, known, uploaded


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
    uploaded = np.zeros(dataset.n_items + 1, dtype=np.int64)
    uploaded[items["item_id"]] = items["upload_ts"]
    train = split_dataset(dataset).train_interactions
    as_of = int(train["ts"].max()) if len(train["ts"]) else 0
    try:
        cache = bundle.load_npz("recall", "popular.npz")
        popular = cache["item_ids"]
        as_of = int(cache["as_of"]) if "as_of" in cache else as_of
    except (ArtifactError, KeyError):
        plays = train["item_id"]
        counts = np.bincount(plays, minlength=len(known))
        popular = np.flatnonzero(counts)[np.argsort(-counts[counts > 0], kind="stable")]
    popular = np.asarray(popular, dtype=np.int64)[: settings.recall_count]
    ids = GatewayIds.for_dataset(
        settings.data_dir,
        dataset.name,
        len(dataset.users["user_id"]),
        len(items["item_id"]),
        settings.new_user_capacity,
        settings.new_item_capacity,
    )
    history = UserItems(train["user_id"], train["item_id"], dataset.n_users)
    spec = build_spec(dataset)
    return Catalog(
        known,
        creators,
        popular,
        spec.history_length,
        bundle.version,
        dataset.name,
        ids,
        as_of,
        history,
        len(dataset.meta["categories"]),
        uploaded,
    )


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
        self._started = time.time()
        self.log = open_event_log(settings.event_log, settings.log)
        logged = self.log.read_events()  # ids and the online view come back from the log
        # Every id assigned online comes back from the log: a restart maps an external id to the
        # dense id it had.
        if catalog.ids is None:
            raise ValueError("the gateway needs the catalog's id maps (load_catalog builds them)")
        self.ids: GatewayIds = catalog.ids
        self.ids.users.restore(logged["user_id"].to_numpy(), logged["user_key"].to_pylist())
        self.updates = CatalogUpdates(self, registry)  # AddItems, ChangeFollows (uploads.py)
        restore_uploads(self.ids, catalog, self.log.read_records("uploads"))
        self.online.record(
            logged["user_id"].to_numpy(),
            logged["item_id"].to_numpy(),
            logged["event"].to_pylist(),
            logged["timestamp_ms"].to_numpy(),
        )
        self.arms = parse_arms(settings.arms)
        for name in [arm.name for arm in self.arms] or [NO_ARM]:  # every label from the start
            self.metrics.arm_answers.labels(name)
            self.metrics.arm_latency.labels(name)
            self.metrics.explored.labels(name)
            self.metrics.explore_empty.labels(name)
        self.shared: RedisState | None = None  # the Redis online store when the store is shared
        if settings.store != "memory":
            from cascade.redis_store import RedisState

            self.shared = RedisState(
                settings.store, catalog.dataset, len(catalog.known), settings.store_limits
            )
        record_shown = None if self.shared is None else self.shared.record_shown
        self.impressions = ImpressionWriter(
            self.log,
            self.metrics,
            settings.impression_queue,
            record_shown,
            settings.impression_linger_s,
        )
        # One channel per stage replica (gateway/replicas.py). Stage calls retry UNAVAILABLE
        # inside their deadline (all are idempotent); Record is not retried (a duplicate would
        # count an event twice), so it gets its own channel per recall replica.
        client = settings.stage_client()
        replica_metrics = ReplicaMetrics(registry)

        def pool(stage: str, target: str, retry_methods=None) -> ReplicaPool:
            return ReplicaPool(
                stage,
                target,
                channel_factory(client, retry_methods),
                settings.breaker_failures,
                settings.breaker_cooldown_s,
                replica_metrics,
                settings.resolve_interval_s,
                settings.probe_timeout_s,
                settings.replica_pick,
                [
                    f
                    for f in (
                        settings.stage_tls_ca,
                        settings.stage_tls_cert,
                        settings.stage_tls_key,
                    )
                    if f is not None
                ],
            )

        self.pools = {s: pool(s, t) for s, t in settings.targets().items()}
        self.record_pool = pool("recall", settings.recall_target, retry_methods=())
        funnel = Funnel(
            settings.recall_count,
            settings.prerank_count,
            settings.rank_count,
            settings.max_per_creator,
            settings.breaker_failures,
            settings.breaker_cooldown_s,
        )
        self.cascade = Cascade(
            self.pools,
            funnel,
            catalog.popular,
            catalog.creators,
            self.metrics,
            catalog.consumed,
            catalog.uploaded,
        )
        self.shadow = None
        if settings.shadow_arm:
            arm = next(a for a in self.arms if a.name == settings.shadow_arm)
            self.shadow = Shadow(
                arm,
                self.cascade,
                self.impressions,
                settings.default_deadline_s,
                settings.shares(),
                registry,
            )

    def swap(self, catalog: Catalog) -> str:
        """Validates Feedback against, and falls back on, a newly published bundle's catalog
        (hot reload); returns its version."""
        if catalog.ids is None:
            raise ValueError(f"the catalog of {catalog.version} has no id maps")
        catalog.ids = self.ids = self.ids.with_items(catalog.ids)
        restore_uploads(self.ids, catalog, self.log.read_records("uploads"))  # not in the bundle
        self.catalog = catalog
        self.cascade.popular, self.cascade.creators = catalog.popular, catalog.creators
        self.cascade.consumed = catalog.consumed
        if catalog.uploaded is not None:  # else the upload times known so far stay
            self.cascade.uploaded = catalog.uploaded
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
        started = time.perf_counter()
        budget = Budget(self._budget_s(context), settings.shares())
        now_ms = self.now_ms(context)  # the request's one time: every stage uses it
        # An id the map does not know yet (no Feedback so far) is served as anonymous.
        try:
            dense, user_key = self.ids.recommend_user(request)
        except IdProblem as problem:
            invalid_argument(context, problem.field, str(problem))
        shared = self.shared
        user = common_pb2.UserContext(
            user_id=dense,
            recent_item_ids=self.online.recent(dense) if dense and shared is None else [],
            request_time_ms=now_ms,
            context=request.context,
        )
        seen_of = None
        if shared is not None and dense > 0:  # read only when a local fallback runs

            def seen_of() -> np.ndarray:
                recent = shared.consumed(dense, self.catalog.history_length)
                return np.union1d(recent, shared.shown(dense))

        served = Served()
        q, reason = 1.0, ""
        if self.admission is not None:
            q, reason = self.admission.funnel_factor(budget.left(), context.invocation_metadata())
        funnel, arm = self.cascade.funnel, ""
        if self.arms:  # anonymous users share one key, so one arm
            chosen = assign(self.settings.arm_salt, user_key or "anonymous", self.arms)
            funnel, arm = dataclasses.replace(funnel, **chosen.overrides), chosen.name
        funnel = shrink(funnel, q, count)
        request_id = uuid.uuid4().hex  # before the run: it decides whether the request explores
        response = self.cascade.run(
            user, count, budget, request.debug, served, seen_of, funnel, request_id
        )
        if reason and self.admission is not None:  # only admission gives a reason
            mark_shrunk(response, q, reason, self.admission.metrics)
        response.request_id, response.arm = request_id, arm
        metrics = self.metrics
        explored = [response.items.item_ids[p] for p in response.explored_positions]
        if explored:
            self.cascade.explored.record(dense, explored, now_ms, funnel.explore_max_age_s * 1000)
            metrics.labelled(metrics.explored, arm or NO_ARM).inc(len(explored))
        elif served.explore_eligible == 0:  # explored, but recall held no recent upload
            metrics.labelled(metrics.explore_empty, arm or NO_ARM).inc()
        metrics.labelled(metrics.arm_answers, arm or NO_ARM).inc()
        metrics.labelled(metrics.arm_latency, arm or NO_ARM).observe(time.perf_counter() - started)
        response.item_keys.extend(self.ids.item_keys(response.items.item_ids))
        shown = Shown(
            response.request_id,
            dense,
            user_key,
            now_ms,
            list(response.items.item_ids),
            list(response.items.channel_masks),
            list(response.degraded_stages),
            served,
            arm,
            shown_ms=now_ms,  # a shown page's TTL runs on the request's clock, as rerank reads it
            explored=list(response.explored_positions),
        )
        self.impressions.submit(shown)
        if self.shadow is not None and arm != settings.shadow_arm:
            self.shadow.submit(shown, user, count)
        return response

    def Feedback(self, request: gateway_pb2.FeedbackRequest, context: grpc.ServicerContext):
        """Accepted means on the log: the events are appended (durable) before the answer, and
        a log failure fails the call (UNAVAILABLE, nothing claimed). Recall is told afterwards;
        when it is down the events stay acknowledged: it catches up from the log."""
        n = len(request.events)
        if n > self.settings.max_feedback_events:
            invalid_argument(
                context,
                "events",
                f"{n} events in one call; at most {self.settings.max_feedback_events}",
            )
        now_ms, wall_ms = self.now_ms(context), int(time.time() * 1000)
        events, id_rejections = self.ids.resolve_items(request.events)  # item_key -> item_id
        checked = check_events(events, self.catalog.known_items, wall_ms / 1000)
        valid = [events[int(i)] for i in checked.indices]
        user_keys = self.ids.user_keys(valid)
        try:  # users first seen now get dense ids; only valid events reach this
            dense = self.ids.users.assign(user_keys)
        except IdSpaceFull as error:
            resource_exhausted(context, "events.user_id", f"no room for new users: {error}")
        stamps = np.array([e.timestamp_ms or now_ms for e in valid], dtype=np.int64)
        table = pa.table(
            {
                "user_id": dense,
                "user_key": user_keys,
                "item_id": checked.item_ids,
                "event": checked.names,
                "timestamp_ms": stamps,
                "request_id": [e.request_id for e in valid],
                "logged_ms": np.full(len(valid), wall_ms, dtype=np.int64),
            },
            schema=EVENTS,
        )
        try:
            new = self.log.append_new_events(table)  # a repeat is stored already: acknowledged
        except EventLogError as error:
            self.metrics.event_log_failures.inc()
            log.warning("gateway: event log append failed: %s", error)
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the event log could not store the events, none was recorded: {error}",
            )
        if self.shared is not None:
            self._store_shared(self.shared, table, context)
        elif new.num_rows:
            self._store_embedded(new)
        self.metrics.feedback.labels("accepted").inc(len(valid))
        rejected = merge_rejections(checked.rejected, id_rejections)
        self.metrics.feedback.labels("rejected").inc(len(rejected))
        response = gateway_pb2.FeedbackResponse(accepted=len(valid))
        for index, reason in rejected:
            response.rejected.add(index=index, reason=reason)
        return response

    def AddItems(self, request, context: grpc.ServicerContext):
        return self.updates.add_items(request, context)

    def ChangeFollows(self, request, context: grpc.ServicerContext):
        return self.updates.change_follows(request, context)

    def _store_shared(
        self, shared: RedisState, table: pa.Table, context: grpc.ServicerContext
    ) -> None:
        """Every valid event (repeats included: the shared store skips what it applied, so a
        retry after a failure completes it) in one atomic write; UNAVAILABLE when it failed."""
        if not table.num_rows:
            return
        try:
            shared.record(
                table["user_id"].to_numpy(),
                table["item_id"].to_numpy(),
                table["timestamp_ms"].to_numpy() // 1000,
                table["event"].to_pylist(),
            )
        except Exception as error:  # redis.RedisError
            self.metrics.record_failures.inc()
            log.warning("gateway: the online store did not take a Feedback batch: %s", error)
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the events are logged but the online store did not take them; retry (safe)",
            )

    def _store_embedded(self, new: pa.Table) -> None:
        """Newly logged events into the gateway's online view and recall's store."""
        users, items = new["user_id"].to_numpy(), new["item_id"].to_numpy()
        names, stamps = new["event"].to_pylist(), new["timestamp_ms"].to_numpy()
        self.online.record(users, items, names, stamps)
        types = {name: number for number, name in EVENT_NAMES.items()}
        forward = gateway_pb2.FeedbackRequest()
        for user, item, name, stamp, request_id in zip(
            users.tolist(),
            items.tolist(),
            names,
            stamps.tolist(),
            new["request_id"].to_pylist(),
            strict=True,
        ):
            forward.events.add(
                user_id=user,
                item_id=item,
                type=types[name],
                timestamp_ms=stamp,
                request_id=request_id,
            )
        self._forward(forward)

    def now_ms(self, context: grpc.ServicerContext | None = None) -> int:
        """The time a request happens at, by the `clock` setting ("caller": the call's
        request-time header when it sent one, gateway/request_time.py)."""
        if self.settings.clock == "caller" and context is not None:
            sent = caller_time_ms(context)
            if sent:
                return sent
        if self.settings.clock == "wall":
            return int(time.time() * 1000)
        return int((self.catalog.as_of_s + time.time() - self._started) * 1000)

    def _forward(self, request: gateway_pb2.FeedbackRequest) -> None:
        """Recall's Record on one serving replica; a failure is counted, never retried (the
        events are logged already: recall catches up from the log when it restarts)."""
        replica = self.record_pool.pick()
        if replica is None:
            self.metrics.record_failures.inc()
            log.warning("gateway: recall Record skipped: every recall replica is ejected")
            return
        try:
            replica.stub(recall_pb2_grpc.RecallStub).Record(
                request, timeout=self.settings.record_timeout_s
            )
            ok = True
        except grpc.RpcError as error:
            ok = False
            self.metrics.record_failures.inc()
            log.warning("gateway: recall Record failed: %s", getattr(error, "code", str)())
        self.record_pool.record(replica, ok)

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
        if self.shadow is not None:
            self.shadow.close()  # its last records go to the writer before it stops
        self.impressions.close()
        self.log.close()
        for pool in (*self.pools.values(), self.record_pool):
            pool.close()
        if self.shared is not None:
            self.shared.close()
        if self.admission is not None:
            self.admission.close()


def new_service(
    settings: GatewaySettings, catalog: Catalog, registry: CollectorRegistry
) -> GatewayService:
    return GatewayService(settings, catalog, registry, Admission(settings.admission, registry))


def interceptors(
    settings: GatewaySettings, service: GatewayService
) -> list[grpc.ServerInterceptor]:
    # Admission first: it decides before the call waits for a worker thread.
    auth = [TokenAuth(settings.api_token.reveal())] if settings.api_token else []
    admission = [service.admission] if service.admission is not None else []
    return [*admission, *auth]


def describe(settings: GatewaySettings, service: GatewayService) -> str:
    token = "on" if settings.api_token else "off"
    return f"stages {settings.targets()} over {settings.stage_security()}; API token {token}"


SERVER = StageServer(
    name=STAGE,
    settings=GatewaySettings,
    load=load_catalog,
    service=new_service,
    register=gateway_pb2_grpc.add_GatewayServicer_to_server,
    service_name=SERVICE,
    interceptors=interceptors,
    describe=describe,
    close=GatewayService.close,
)
start, main = SERVER.start, SERVER.main

if __name__ == "__main__":
    sys.exit(main())
