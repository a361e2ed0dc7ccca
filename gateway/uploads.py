"""The gateway's side of the living catalogue: AddItems (uploads) and ChangeFollows.

Per call: validate the whole batch (INVALID_ARGUMENT naming items[i].field or changes[i].field),
give each new item_key a dense item id (gateway/ids.py; a key uploaded before keeps its id, so a
retry is safe), append the new records to the event log (durable before the answer: a log failure
is UNAVAILABLE and nothing is claimed), grow the gateway's catalogue (Feedback may name the item at
once), then forward them to every replica of recall, pre-rank and rank (CatalogUpdates), whose
stores serve them from the next request. A replica that misses a forward gets it from the log when
it restarts. `restore` rebuilds the item ids and the catalogue from the log at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter

from cascade.eventlog import EventLogError
from cascade.ids import IdSpaceFull, external_key
from cascade.live_catalog import (
    FOLLOWS,
    UPLOADS,
    CatalogProblem,
    check_follow_changes,
    check_new_items,
)
from cascade.server import invalid_argument, resource_exhausted
from cascade.v1 import catalog_pb2, catalog_pb2_grpc
from gateway.ids import GatewayIds
from gateway.replicas import ReplicaPool

log = logging.getLogger(__name__)
FORWARD_TO = ("recall", "prerank", "rank")  # the stages whose stores hold item metadata


class CatalogUpdates:
    """AddItems / ChangeFollows for a GatewayService (which owns the catalog, ids, log, pools)."""

    def __init__(self, service, registry: CollectorRegistry):
        self.service = service
        self.forwarded = Counter(
            "cascade_gateway_catalog_forwards",
            "Uploads and follow changes forwarded to stage replicas, by kind and result.",
            ["kind", "result"],
            registry=registry,
        )

    def add_items(self, request: catalog_pb2.AddItemsRequest, context: grpc.ServicerContext):
        service = self.service
        catalog, limit = service.catalog, service.settings.max_feedback_events
        now_ms = service.now_ms(context)
        try:
            if len(request.items) > limit:
                raise CatalogProblem("items", f"{len(request.items)} in one call; at most {limit}")
            # The future bound on the wall clock, as Feedback's (a client bug, whatever the clock).
            check_new_items(
                request.items,
                catalog.n_categories,
                _wall_ms(),
                need_key=True,
                content_dim=catalog.content_dim,
            )
            keys = [_item_key(item.item_key, i) for i, item in enumerate(request.items)]
        except CatalogProblem as problem:
            invalid_argument(context, problem.field, str(problem))
        try:
            ids = service.ids.items.assign(keys)  # a key seen before keeps its id
        except IdSpaceFull as error:
            resource_exhausted(context, "items", f"no room for new items: {error}")
        new = ~catalog.known_items(ids)  # assigned but never logged (a failed try) counts as new
        _, first = np.unique(ids, return_index=True)
        new &= np.isin(np.arange(len(ids)), first)  # a key twice in one batch: added once
        rows = np.flatnonzero(new)
        items = [request.items[i] for i in rows]
        table = pa.table(
            {
                "item_id": ids[rows],
                "item_key": [keys[i] for i in rows],
                "creator_id": [item.creator_id for item in items],
                "categories": [list(item.categories) for item in items],
                "upload_ms": [item.upload_time_ms or now_ms for item in items],
                "logged_ms": np.full(len(rows), _wall_ms(), np.int64),
                "content": [list(item.content) for item in items],
            },
            schema=UPLOADS,
        )
        self._append(context, "uploads", table)
        catalog.add(
            table["item_id"].to_numpy(),
            table["creator_id"].to_numpy(),
            table["upload_ms"].to_numpy() // 1000,
        )
        # The local creator cap sees them too, and the traffic pool knows them as young uploads
        # (with Redis, the shared counters' snapshot makes room for their ids).
        service.cascade.creators, service.cascade.uploaded = catalog.creators, catalog.uploaded
        if service.shared is not None:
            service.shared.grow(len(catalog.uploaded))
        forward = catalog_pb2.AddItemsRequest()
        for item, item_id, upload_ms in zip(
            items, ids[rows].tolist(), table["upload_ms"].to_pylist(), strict=True
        ):
            added = forward.items.add()
            added.CopyFrom(item)
            added.item_id, added.upload_time_ms = item_id, upload_ms
        if len(forward.items):
            self._forward("uploads", lambda stub: stub.AddItems(forward, timeout=self._timeout()))
        return catalog_pb2.AddItemsResponse(item_ids=ids.tolist(), added=len(rows))

    def change_follows(
        self, request: catalog_pb2.ChangeFollowsRequest, context: grpc.ServicerContext
    ):
        service = self.service
        now_ms, limit = service.now_ms(context), service.settings.max_feedback_events
        try:
            if len(request.changes) > limit:
                raise CatalogProblem(
                    "changes", f"{len(request.changes)} in one call; at most {limit}"
                )
            check_follow_changes(request.changes, _wall_ms())
        except CatalogProblem as problem:
            invalid_argument(context, problem.field, str(problem))
        changes = list(request.changes)
        table = pa.table(
            {
                "follower_id": [c.follower_id for c in changes],
                "followee_id": [c.followee_id for c in changes],
                "unfollow": [c.unfollow for c in changes],
                "timestamp_ms": [c.timestamp_ms or now_ms for c in changes],
                "logged_ms": np.full(len(changes), _wall_ms(), np.int64),
            },
            schema=FOLLOWS,
        )
        self._append(context, "follows", table)
        forward = catalog_pb2.ChangeFollowsRequest(changes=changes)
        for change, stamp in zip(forward.changes, table["timestamp_ms"].to_pylist(), strict=True):
            change.timestamp_ms = stamp
        if changes:  # only recall's follow channel reads the graph
            self._forward(
                "follows",
                lambda stub: stub.ChangeFollows(forward, timeout=self._timeout()),
                ("recall",),
            )
        return catalog_pb2.ChangeFollowsResponse(applied=len(changes))

    def _append(self, context: grpc.ServicerContext, kind: str, table: pa.Table) -> None:
        try:
            self.service.log.append_records(kind, table)
        except EventLogError as error:
            self.service.metrics.event_log_failures.inc()
            log.warning("gateway: event log append (%s) failed: %s", kind, error)
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the event log could not store the {kind}, none was recorded: {error}",
            )

    def _timeout(self) -> float:
        return self.service.settings.record_timeout_s

    def _forward(
        self,
        kind: str,
        call: Callable[[catalog_pb2_grpc.CatalogUpdatesStub], object],
        stages: tuple[str, ...] = FORWARD_TO,
    ) -> None:
        """Every serving replica of each stage (their embedded stores each hold the catalogue);
        a failure is counted and logged, the record is on the log already."""
        pools: dict[str, ReplicaPool] = self.service.pools
        for stage in stages:
            for replica in pools[stage].replicas:
                try:
                    call(replica.stub(catalog_pb2_grpc.CatalogUpdatesStub))
                    self.forwarded.labels(kind, "ok").inc()
                except grpc.RpcError as error:
                    self.forwarded.labels(kind, "failed").inc()
                    log.warning(
                        "gateway: %s to %s %s failed: %s",
                        kind,
                        stage,
                        replica.address,
                        getattr(error, "code", str)(),
                    )


def restore(ids: GatewayIds, catalog, uploads: pa.Table) -> int:
    """Item ids and catalogue entries of every logged upload (at start, or onto a hot-reloaded
    catalogue that may already hold some of them); returns how many items were added."""
    if not uploads.num_rows:
        return 0
    item_ids = uploads["item_id"].to_numpy()
    keys = uploads["item_key"].to_pylist()
    unmapped = ids.items.lookup(keys) == 0
    if unmapped.any():
        ids.items.restore(item_ids[unmapped], [k for k, u in zip(keys, unmapped, strict=True) if u])
    new = ~catalog.known_items(item_ids)
    upload_s = uploads["upload_ms"].to_numpy() // 1000
    catalog.add(item_ids[new], uploads["creator_id"].to_numpy()[new], upload_s[new])
    return int(new.sum())


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _item_key(value: str, index: int) -> str:
    try:
        return external_key(value)
    except ValueError as error:
        raise CatalogProblem(f"items[{index}].item_key", str(error)) from None
