"""The online feature store: what every stage reads per request, and what Feedback writes.

`FeatureStore` is the interface (a Redis backend can implement it later); `InMemoryFeatureStore`
is the embedded default: id-indexed numpy tables for user profiles and item attributes (encoded
with the same FeatureSpec as training), a ring buffer of each user's recent items, the set of items
each user consumed, and per-item event counters. Thread-safe: one lock guards the mutable parts.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from cascade.data.schema import Dataset, Table
from cascade.features import FeatureSpec, encode_by_id, history_before, lookup

EVENTS = ("impression", "click", "play", "complete", "like", "share", "skip")
CONSUMPTION = frozenset({"play", "complete", "like", "share"})  # what "already consumed" means
_COUNTER = {name: i for i, name in enumerate(EVENTS)}


class FeatureStore(Protocol):
    spec: FeatureSpec

    def user_features(self, user_ids: np.ndarray) -> dict[str, np.ndarray]: ...
    def item_features(self, item_ids: np.ndarray) -> dict[str, np.ndarray]: ...
    def item_attributes(self, item_ids: np.ndarray) -> Table: ...
    def history(self, user_ids: np.ndarray) -> np.ndarray: ...
    def consumed(self, user_id: int) -> np.ndarray: ...
    def item_counters(self, item_ids: np.ndarray) -> dict[str, np.ndarray]: ...
    def record(
        self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, events: list[str]
    ) -> None: ...


class InMemoryFeatureStore:
    """The embedded feature store, loaded from a dataset and its training-period interactions."""

    def __init__(
        self,
        dataset: Dataset,
        spec: FeatureSpec,
        interactions: Table,
        impressions: Table | None = None,
    ):
        self.spec = spec
        n_users, n_items = dataset.n_users, dataset.n_items
        self._users = encode_by_id(spec, "user", dataset.users, "user_id", n_users)
        self._items = encode_by_id(spec, "item", dataset.items, "item_id", n_items)
        self._item_attributes = {
            column: _by_id(dataset.items, column, n_items)
            for column in ("creator_id", "categories", "upload_ts")
        }
        length = spec.history_length
        # Ring buffer: row u holds user u's last `length` items; _head[u] is the next slot.
        all_users = np.arange(n_users)
        newest_first = history_before(interactions, all_users, np.full(n_users, 2**32), length)
        filled = (newest_first > 0).sum(axis=1)
        self._ring = _left_align(newest_first[:, ::-1], filled)  # slots 0.. oldest to newest
        self._head = (filled % length).astype(np.int64)  # the slot after the newest
        self._count = filled.astype(np.int64)
        # Consumed items: CSR from the log, plus what arrives online.
        order = np.lexsort((interactions["item_id"], interactions["user_id"]))
        self._consumed_items = interactions["item_id"][order]
        self._consumed_ptr = np.searchsorted(interactions["user_id"][order], np.arange(n_users + 1))
        self._consumed_online: dict[int, list[int]] = {}
        self._counters = np.zeros((n_items, len(EVENTS)), dtype=np.int64)
        for event in ("play", "complete", "like", "share"):
            np.add.at(
                self._counters[:, _COUNTER[event]], interactions["item_id"][interactions[event]], 1
            )
        if impressions is not None:
            np.add.at(self._counters[:, _COUNTER["impression"]], impressions["item_id"], 1)
            np.add.at(
                self._counters[:, _COUNTER["click"]],
                impressions["item_id"][impressions["click"]],
                1,
            )
        self._lock = threading.Lock()

    @classmethod
    def from_split(cls, dataset: Dataset, spec: FeatureSpec, split) -> InMemoryFeatureStore:
        """The serving store: what the training period (a data.split.TemporalSplit) holds."""
        return cls(dataset, spec, split.train_interactions, split.train_impressions)

    # -- reads -------------------------------------------------------------------------------
    def user_features(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        return lookup(self._users, user_ids)

    def item_features(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        return lookup(self._items, item_ids)

    def item_attributes(self, item_ids: np.ndarray) -> Table:
        """Raw creator_id, categories and upload_ts per item (zeros for unknown items)."""
        return lookup(self._item_attributes, item_ids)

    def known_items(self, item_ids: np.ndarray) -> np.ndarray:
        """True where the item is in the catalog."""
        ids = np.asarray(item_ids, dtype=np.int64)
        n = len(self._items["item_id"])
        inside = (ids > 0) & (ids < n)
        return inside & (self._items["item_id"][np.where(inside, ids, 0)] > 0)

    def history(self, user_ids: np.ndarray) -> np.ndarray:
        """(n, history_length) recent item ids per user, newest first, 0-padded."""
        ids = np.asarray(user_ids, dtype=np.int64)
        length = self.spec.history_length
        with self._lock:
            n = len(self._head)
            known = (ids > 0) & (ids < n)
            rows = np.where(known, ids, 0)
            slots = (self._head[rows][:, None] - 1 - np.arange(length)) % length
            items = self._ring[rows[:, None], slots]
            valid = np.arange(length)[None, :] < self._count[rows][:, None]
        return np.where(valid & known[:, None], items, 0)

    def consumed(self, user_id: int) -> np.ndarray:
        """Sorted unique items the user played, completed, liked or shared."""
        logged = np.empty(0, dtype=np.int64)
        if 0 < user_id < len(self._consumed_ptr) - 1:
            logged = self._consumed_items[
                self._consumed_ptr[user_id] : self._consumed_ptr[user_id + 1]
            ]
        with self._lock:
            online = np.array(self._consumed_online.get(int(user_id), []), dtype=np.int64)
        return np.union1d(logged, online)

    def item_counters(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        inside = (ids > 0) & (ids < len(self._counters))
        with self._lock:
            rows = self._counters[np.where(inside, ids, 0)] * inside[:, None]
        return {event: rows[:, i] for event, i in _COUNTER.items()}

    # -- writes ------------------------------------------------------------------------------
    def record(
        self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, events: list[str]
    ) -> None:
        """Applies user events in order: counters, consumed set, and history for plays.

        Unknown event names raise ValueError before anything is written (the batch is atomic).
        """
        unknown = sorted(set(events) - set(EVENTS))
        if unknown:
            raise ValueError(f"unknown event types {unknown}; expected one of {EVENTS}")
        length = self.spec.history_length
        with self._lock:
            for user, item, event in zip(
                np.asarray(user_ids).tolist(), np.asarray(item_ids).tolist(), events, strict=True
            ):
                if 0 < item < len(self._counters):
                    self._counters[item, _COUNTER[event]] += 1
                if event in CONSUMPTION:
                    self._consumed_online.setdefault(user, []).append(item)
                if event == "play":
                    self._grow(user + 1)
                    self._ring[user, self._head[user]] = item
                    self._head[user] = (self._head[user] + 1) % length
                    self._count[user] = min(self._count[user] + 1, length)

    def _grow(self, n_users: int) -> None:
        """Makes room for users who signed up after the store was built (lock held)."""
        if n_users <= len(self._head):
            return
        extra = max(n_users, 2 * len(self._head)) - len(self._head)
        self._ring = np.concatenate([self._ring, np.zeros((extra, self._ring.shape[1]), np.int64)])
        self._head = np.concatenate([self._head, np.zeros(extra, np.int64)])
        self._count = np.concatenate([self._count, np.zeros(extra, np.int64)])


def _by_id(table: Table, column: str, n_rows: int) -> np.ndarray:
    ids = table["item_id"]
    values = table[column]
    rows = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    rows[ids] = values
    return rows


def _left_align(oldest_to_newest: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Moves each row's `filled` newest items to slots 0..filled-1, oldest first."""
    length = oldest_to_newest.shape[1]
    source = (np.arange(length)[None, :] + (length - filled)[:, None]) % length
    return np.take_along_axis(oldest_to_newest, source, axis=1)
