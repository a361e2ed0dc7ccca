"""User events from the wire (cascade.v1.Event) checked and turned into feature-store records.

The gateway validates every Feedback event with `check_events` and forwards the valid ones to
recall's Record RPC, which checks them again (a stage never trusts its caller) and calls
`FeatureStore.record`. Checks are vectorised over the batch; each rejection names its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from cascade.v1 import gateway_pb2

# Wire event type -> the feature store's event name (cascade.feature_store.EVENTS).
EVENT_NAMES: dict[int, str] = {
    value.number: value.name.removeprefix("EVENT_TYPE_").lower()
    for value in gateway_pb2.EventType.DESCRIPTOR.values
    if value.number != gateway_pb2.EVENT_TYPE_UNSPECIFIED
}
MAX_FUTURE_S = 86_400  # clocks drift; an event stamped more than a day ahead is a client bug


class CheckedEvents(NamedTuple):
    """The valid events as parallel arrays, plus (index, reason) for every rejected one."""

    indices: np.ndarray  # (n_valid,) positions in the request
    user_ids: np.ndarray  # (n_valid,) int64
    item_ids: np.ndarray  # (n_valid,) int64
    ts: np.ndarray  # (n_valid,) Unix seconds (0 on the wire = now)
    names: list[str]  # (n_valid,) feature-store event names
    rejected: list[tuple[int, str]]


def check_events(
    events: Sequence[gateway_pb2.Event],
    known_items: Callable[[np.ndarray], np.ndarray],
    now_s: float | None = None,
) -> CheckedEvents:
    """Splits `events` into valid ones and rejections: user_id > 0, an item the catalog knows,
    a known event type, and a timestamp in [0, now + 1 day]."""
    now_s = time.time() if now_s is None else now_s
    n = len(events)
    users = np.fromiter((e.user_id for e in events), dtype=np.int64, count=n)
    keyed = np.fromiter((bool(e.user_key) for e in events), dtype=bool, count=n)
    items = np.fromiter((e.item_id for e in events), dtype=np.int64, count=n)
    types = np.fromiter((e.type for e in events), dtype=np.int64, count=n)
    stamps = np.fromiter((e.timestamp_ms for e in events), dtype=np.int64, count=n)
    known_type = np.isin(types, np.fromiter(EVENT_NAMES, dtype=np.int64))
    catalog = known_items(items) if n else np.zeros(0, bool)
    late_ms = int((now_s + MAX_FUTURE_S) * 1000)
    checks = (  # first failing check wins: one reason per event
        ((users > 0) | keyed, lambda i: f"user_id: must be > 0, got {users[i]}"),
        (catalog, lambda i: f"item_id: {items[i]} is not in the catalog"),
        (known_type, lambda i: f"type: {types[i]} is not a known event type (or unspecified)"),
        (stamps >= 0, lambda i: f"timestamp_ms: must be >= 0 (0 = now), got {stamps[i]}"),
        (stamps <= late_ms, lambda i: f"timestamp_ms: {stamps[i]} is more than a day ahead"),
    )
    valid = np.ones(n, dtype=bool)
    rejected: list[tuple[int, str]] = []
    for passed, reason in checks:
        failing = np.flatnonzero(valid & ~passed)
        rejected += [(int(i), reason(i)) for i in failing]
        valid &= passed
    rejected.sort()
    keep = np.flatnonzero(valid)
    ts = np.where(stamps[keep] > 0, stamps[keep] // 1000, int(now_s))
    names = [EVENT_NAMES[int(t)] for t in types[keep]]
    return CheckedEvents(keep, users[keep], items[keep], ts, names, rejected)
