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

import logging
import sys
import time
import uuid
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry

from cascade.backends import open_event_log
from cascade.eventlog import EVENTS, EventLogError
from cascade.events import EVENT_NAMES, check_events
from cascade.ids import IdSpaceFull
from cascade.server import StageServer, invalid_argument, resource_exhausted
from cascade.telemetry import EXPLAIN_METADATA, set_model_info
from cascade.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, recall_pb2_grpc
from gateway.admission import Admission, mark_shrunk, shrink
from gateway.arms import assign, funnel_of, parse_arms
from gateway.auth import TokenAuth
from gateway.catalog import Catalog, load_catalog
from gateway.ids import GatewayIds, IdProblem, merge_rejections
from gateway.impressions import ImpressionWriter, Shown
from gateway.online import OnlineEvents
from gateway.pipeline import Budget, GatewayMetrics, Served
from gateway.pool import PoolCollector, PoolCounters, shared_counts
from gateway.replicas import ReplicaMetrics
from gateway.request_time import caller_time_ms
from gateway.settings import GatewaySettings
from gateway.shadow import Shadow
from gateway.transport import new_cascade, stage_pools
from gateway.uploads import CatalogUpdates
from gateway.uploads import restore as restore_uploads

if TYPE_CHECKING:
    from cascade.redis_store import RedisState

log = logging.getLogger(__name__)
STAGE = "gateway"
NO_ARM = "none"  # the arm label of answers when no arms are configured
SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


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
        # Explain (the console) is never for anonymous traffic: the API token, when the gateway
        # has one, already guards every call; else the explain token must come with the call.
        token = settings.explain_token.reveal()
        self.explain_auth = TokenAuth(token) if token and not settings.api_token else None
        for name in [arm.name for arm in self.arms] or [NO_ARM]:  # every label from the start
            self.metrics.arm_answers.labels(name)
            self.metrics.arm_latency.labels(name)
            self.metrics.pool.slots.labels(name)
            self.metrics.pool.empty.labels(name)
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
        # One channel per stage replica (gateway/replicas.py); Record is not retried (a
        # duplicate would count an event twice), so it gets its own channel per recall replica.
        replica_metrics = ReplicaMetrics(registry)
        self.pools = stage_pools(settings, replica_metrics)
        self.record_pool = stage_pools(
            settings, replica_metrics, {"recall": settings.recall_target}, retry_methods=()
        )["recall"]
        self.cascade = new_cascade(settings, catalog, self.pools, self.metrics)
        # The pool's delivered impressions and plays: with Redis the counters every replica
        # writes, else this gateway's own, rebuilt from the log like the rest of its view.
        self.pool_counters = PoolCounters()
        self.pool_counters.record(logged["item_id"].to_numpy(), logged["event"].to_pylist())
        self.cascade.pool.counts = (
            self.pool_counters.counts if self.shared is None else shared_counts(self.shared)
        )
        registry.register(
            PoolCollector(
                self.cascade.pool, lambda: self.cascade.funnel.pool, lambda: self.cascade.uploaded
            )
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
            if self.shared is not None:
                self.shared.grow(len(catalog.uploaded))
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
        if request.explain:
            self._authorize_explain(context)
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
                # Shown pages expire on the request's clock (the writer records them at it).
                return np.union1d(recent, shared.shown(dense, now_ms))

        served = Served()
        q, reason = 1.0, ""
        if self.admission is not None:
            q, reason = self.admission.funnel_factor(budget.left(), context.invocation_metadata())
        funnel, arm = self.cascade.funnel, ""
        if self.arms:  # anonymous users share one key, so one arm
            chosen = assign(self.settings.arm_salt, user_key or "anonymous", self.arms)
            funnel, arm = funnel_of(funnel, chosen.overrides), chosen.name
        funnel = shrink(funnel, q, count)
        request_id = uuid.uuid4().hex  # before the run: it seeds the pool's draws
        response = self.cascade.run(
            user,
            count,
            budget,
            request.debug,
            served,
            seen_of,
            funnel,
            request_id,
            EXPLAIN_METADATA if request.explain else (),
            explain=request.explain,
        )
        if reason and self.admission is not None:  # only admission gives a reason
            mark_shrunk(response, q, reason, self.admission.metrics)
        response.request_id, response.arm = request_id, arm
        if request.explain:  # no side effect: no impression, nothing shown, no arm count
            response.item_keys.extend(self.ids.item_keys(response.items.item_ids))
            self._explain(response.explanation, dense, list(user.recent_item_ids))
            return response
        metrics = self.metrics
        pooled = [response.items.item_ids[p] for p in response.explored_positions]
        self.cascade.pool.served(dense, pooled, now_ms, funnel.pool.window_s * 1000)
        if pooled:
            metrics.labelled(metrics.pool.slots, arm or NO_ARM).inc(len(pooled))
        elif served.pool_young == 0:  # the pool was on, but recall held no young upload
            metrics.labelled(metrics.pool.empty, arm or NO_ARM).inc()
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

    def _authorize_explain(self, context: grpc.ServicerContext) -> None:
        if self.settings.api_token:  # TokenAuth let the call in: it presented the API token
            return
        if self.explain_auth is None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "explain: the gateway has no API token and no explain token; set "
                "CASCADE_GATEWAY_EXPLAIN_TOKEN (or CASCADE_GATEWAY_API_TOKEN)",
            )
        elif not self.explain_auth.allowed(context.invocation_metadata() or ()):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "explain needs the gateway's explain token: send `authorization: Bearer <token>`",
            )

    def _explain(self, explanation: gateway_pb2.Explanation, dense: int, recent: list[int]) -> None:
        """What the gateway knows of the user, beside the stages' lists the cascade put there."""
        explanation.user_id = dense
        if dense <= 0:
            return
        if self.shared is not None:
            consumed = list(self.shared.consumed(dense, self.catalog.history_length))
            explanation.shown_item_ids.extend(int(i) for i in self.shared.shown(dense))
        else:
            logged = self.catalog.consumed(dense)
            consumed = recent + logged[~np.isin(logged, recent)].tolist()
        explanation.consumed_item_ids.extend(int(i) for i in consumed)

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

    def Version(self, request, context: grpc.ServicerContext) -> gateway_pb2.VersionResponse:
        return gateway_pb2.VersionResponse(catalog_version=self.catalog.version)

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
        self.pool_counters.record(items, names)
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
