"""The online feature store: what every stage reads per request, and what Feedback writes.

`FeatureStore` is the interface; two backends implement it. Both hold the dataset's static tables
in memory (`DatasetFeatures`: user profiles and item attributes encoded with the training
FeatureSpec, and the training period's history, consumed items and counters). What arrives online
lives in the backend: `InMemoryFeatureStore` (embedded default; bounded per-user state in
cascade.online_state, rebuilt from the event log at start) or `RedisFeatureStore`
(cascade.redis_store; shared by every replica of every stage). `cascade.backends.open_store`
picks one from the `store` setting: "memory" or "redis://host:port/db".
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import numpy as np

from cascade.data.schema import Dataset, Table
from cascade.features import (
    FeatureSpec,
    content_width,
    encode,
    encode_by_id,
    history_before,
    lookup,
)
from cascade.live_catalog import LiveCatalog
from cascade.online_state import CONSUMPTION, OnlineUsers, StoreLimits
from cascade.redis_client import is_redis_url

EVENTS = ("impression", "click", "play", "complete", "like", "share", "skip")
_COUNTER = {name: i for i, name in enumerate(EVENTS)}
__all__ = ["CONSUMPTION", "EVENTS", "FeatureStore", "InMemoryFeatureStore", "StoreLimits"]


class FeatureStore(Protocol):
    spec: FeatureSpec
    n_items: int  # item ids are 0..n_items-1; uploads grow it
    live: LiveCatalog  # the items uploaded online
    n_categories: int  # category ids are 1..n_categories-1

    def user_features(self, user_ids: np.ndarray) -> dict[str, np.ndarray]: ...
    def item_features(self, item_ids: np.ndarray) -> dict[str, np.ndarray]: ...
    def item_attributes(self, item_ids: np.ndarray) -> Table: ...
    def known_items(self, item_ids: np.ndarray) -> np.ndarray: ...
    def history(self, user_ids: np.ndarray) -> np.ndarray: ...
    def consumed(self, user_id: int) -> np.ndarray: ...
    def shown(self, user_id: int, at_ms: int | None = None) -> np.ndarray: ...
    def item_counters(self, item_ids: np.ndarray) -> dict[str, np.ndarray]: ...
    def record(
        self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, events: list[str]
    ) -> int | None: ...  # Redis: how many events were new
    def record_shown(self, user_id: int, item_ids: np.ndarray, time_ms: int) -> None: ...
    def rebuild(self, events) -> int: ...
    def add_items(self, item_ids, creator_ids, categories, upload_ts, content=None) -> int: ...
    def change_follows(self, followers, followees, unfollow) -> None: ...
    def counter_totals(self) -> dict[str, int]: ...


def check_event_names(events: list[str]) -> None:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise ValueError(f"unknown event types {unknown}; expected one of {EVENTS}")


def now_ms() -> int:
    return int(time.time() * 1000)


class DatasetFeatures:
    """The static part both backends share, loaded from a dataset and its training period."""

    def __init__(
        self,
        dataset: Dataset,
        spec: FeatureSpec,
        interactions: Table,
        impressions: Table | None = None,
    ):
        self.spec = spec
        self.dataset_name = str(dataset.meta.get("name", "dataset"))
        n_users, n_items = dataset.n_users, dataset.n_items
        self._users = encode_by_id(spec, "user", dataset.users, "user_id", n_users)
        self._items = encode_by_id(spec, "item", dataset.items, "item_id", n_items)
        self._item_attributes = {
            column: _by_id(dataset.items, column, n_items)
            for column in ("creator_id", "categories", "upload_ts")
        }
        self.n_items = n_items  # item ids are 0..n_items-1 (0 = unknown); uploads grow it
        self._known = np.zeros(n_items, dtype=bool)
        self._known[dataset.items["item_id"]] = True
        self.n_categories = len(dataset.meta["categories"])  # category ids 1..n_categories-1
        creators = dataset.creators
        account = np.zeros(int(np.max(creators["creator_id"], initial=0)) + 1, dtype=np.int64)
        account[creators["creator_id"]] = creators["user_id"]
        # Items uploaded and follows changed online (cascade/live_catalog.py).
        self.live = LiveCatalog(account)
        self._grow_lock = threading.Lock()
        # The data clock: the training log's last time (what "now" is for a replayed dataset, as
        # recall's clock = "data"); the ranker's item ages are measured from it.
        self.as_of = int(np.max(interactions["ts"], initial=0))
        # The training period's newest history_length items per dataset user, newest first.
        # Sized by the dataset's users, never by an online id.
        all_users = np.arange(n_users)
        self._trained = history_before(
            interactions, all_users, np.full(n_users, 2**32), spec.history_length
        )
        # Consumed items: CSR from the training log.
        order = np.lexsort((interactions["item_id"], interactions["user_id"]))
        self._consumed_items = interactions["item_id"][order]
        self._consumed_ptr = np.searchsorted(interactions["user_id"][order], np.arange(n_users + 1))
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

    # -- static reads ------------------------------------------------------------------------
    def user_features(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        return lookup(self._users, user_ids)

    def item_features(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        return lookup(self._items, item_ids)

    def item_attributes(self, item_ids: np.ndarray) -> Table:
        """Raw creator_id, categories and upload_ts per item (zeros for unknown items)."""
        return lookup(self._item_attributes, item_ids)

    def known_items(self, item_ids: np.ndarray) -> np.ndarray:
        """True where the item is in the catalog (the dataset's or uploaded since)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        known = self._known
        inside = (ids > 0) & (ids < len(known))
        return inside & known[np.where(inside, ids, 0)]

    # -- the living catalogue ------------------------------------------------------------------
    def add_items(self, item_ids, creator_ids, categories, upload_ts, content=None) -> int:
        """Adds uploaded items; returns how many were new (an id held already is left as it is).

        Their features are encoded with the training spec: an id beyond the model's vocabulary
        encodes to the unknown row 0 (the models score the item from its creator, categories and
        content vector), while creator, categories, upload time and content are the item's own
        (`content` (n, d) float32, d the spec's content width; None = zeros, unknown). Every
        array is replaced whole (grown to the largest id), so a reader never sees a half-written
        one."""
        ids = np.asarray(item_ids, dtype=np.int64)
        with self._grow_lock:
            _, first = np.unique(ids, return_index=True)
            take = np.sort(first)[~self.known_items(ids[np.sort(first)])]
            take = take[ids[take] > 0]
            if not len(take):
                return 0
            new = {
                "item_id": ids[take],
                "creator_id": np.asarray(creator_ids, np.int64)[take],
                "categories": np.asarray(categories, np.int16)[take],
                "upload_ts": np.asarray(upload_ts, np.int64)[take],
            }
            width = content_width(self.spec)
            if width:
                given = np.zeros((len(ids), width), np.float32) if content is None else content
                new["content"] = np.asarray(given, np.float32).reshape(len(ids), width)[take]
            n = max(self.n_items, int(new["item_id"].max()) + 1)
            rows = new["item_id"]
            encoded = encode(self.spec, "item", new)
            items = {k: _grown(v, n) for k, v in self._items.items()}
            attributes = {k: _grown(v, n) for k, v in self._item_attributes.items()}
            known = _grown(self._known, n)
            for name, values in encoded.items():
                items[name][rows] = values
            for name, values in attributes.items():
                values[rows] = new[name]
            known[rows] = True
            self._grow_counters(n)
            self._items, self._item_attributes = items, attributes
            self._known, self.n_items = known, n
            self.live.add(rows, new["creator_id"], new["categories"], new["upload_ts"])
        return len(take)

    def _grow_counters(self, n: int) -> None:
        self._counters = _grown(self._counters, n)

    def change_follows(self, followers, followees, unfollow) -> None:
        """Follow (unfollow = False) or unfollow changes, the latest per pair winning."""
        self.live.change_follows(followers, followees, unfollow)

    # -- the training period, merged with what each backend holds online ----------------------
    def _history_with(self, ids: np.ndarray, online: list[list[int]]) -> np.ndarray:
        """(n, history_length): each user's online plays (newest first) before the training
        period's, 0-padded."""
        length = self.spec.history_length
        known = (ids > 0) & (ids < len(self._trained))
        out = np.where(known[:, None], self._trained[np.where(known, ids, 0)], 0)
        for row, plays in enumerate(online):
            if plays:
                stored = out[row][out[row] > 0]
                merged = np.concatenate([np.asarray(plays, dtype=np.int64), stored])[:length]
                out[row] = np.pad(merged, (0, length - len(merged)))
        return out

    def _trained_consumed(self, user_id: int) -> np.ndarray:
        if 0 < user_id < len(self._consumed_ptr) - 1:
            return self._consumed_items[
                self._consumed_ptr[user_id] : self._consumed_ptr[user_id + 1]
            ]
        return np.empty(0, dtype=np.int64)

    def _trained_counters(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, len(EVENTS)), inside mask) of the training-period counters."""
        inside = (ids > 0) & (ids < len(self._counters))
        return self._counters[np.where(inside, ids, 0)] * inside[:, None], inside


class InMemoryFeatureStore(DatasetFeatures):
    """The embedded store: the dataset's tables plus bounded online state in this process.
    Thread-safe. `rebuild(events)` replays the event log at start (nothing acknowledged is lost
    across a restart as long as the log's disk survives)."""

    def __init__(
        self,
        dataset: Dataset,
        spec: FeatureSpec,
        interactions: Table,
        impressions: Table | None = None,
        limits: StoreLimits | None = None,
    ):
        super().__init__(dataset, spec, interactions, impressions)
        self.limits = limits or StoreLimits(recent_plays=max(50, spec.history_length))
        self._online = OnlineUsers(self.limits)
        # Online counts beside the trained ones, same shape: a request reads both vectorised
        # (a dict per item cost a Python step per candidate once any Feedback had arrived).
        self._online_counters = np.zeros_like(self._counters)
        self._any_online = False
        self._lock = threading.Lock()

    @classmethod
    def from_split(
        cls, dataset: Dataset, spec: FeatureSpec, split, limits: StoreLimits | None = None
    ) -> InMemoryFeatureStore:
        """The serving store: what the training period (a data.split.TemporalSplit) holds."""
        return cls(dataset, spec, split.train_interactions, split.train_impressions, limits)

    def history(self, user_ids: np.ndarray) -> np.ndarray:
        """(n, history_length) recent item ids per user, newest first, 0-padded."""
        ids = np.asarray(user_ids, dtype=np.int64)
        length = self.spec.history_length
        online = [self._online.recent_plays(u, length) for u in ids.tolist()]
        return self._history_with(ids, online)

    def consumed(self, user_id: int) -> np.ndarray:
        """Sorted unique items the user played, completed, liked or shared."""
        online = np.array(self._online.consumed(int(user_id)), dtype=np.int64)
        return np.union1d(self._trained_consumed(int(user_id)), online)

    def recent_consumed(self, user_id: int, n: int) -> np.ndarray:
        """The user's newest `n` items consumed online, newest first."""
        return np.array(self._online.recent_consumed(int(user_id), n), dtype=np.int64)

    def shown(self, user_id: int, at_ms: int | None = None) -> np.ndarray:
        """Items shown to the user within shown_ttl_s before `at_ms` (the request's time; None =
        now), sorted."""
        at_ms = now_ms() if at_ms is None else int(at_ms)
        return np.unique(np.array(self._online.shown(int(user_id), at_ms), dtype=np.int64))

    def item_counters(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        rows, inside = self._trained_counters(ids)
        if self._any_online:
            with self._lock:
                rows += self._online_counters[np.where(inside, ids, 0)] * inside[:, None]
        return {event: rows[:, i] for event, i in _COUNTER.items()}

    # -- writes ------------------------------------------------------------------------------
    def record(
        self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, events: list[str]
    ) -> None:
        """Applies user events: counters, consumed set, and recent plays (ordered by event time).

        Unknown event names raise ValueError before anything is written (the batch is atomic).
        """
        check_event_names(events)
        users = np.asarray(user_ids, dtype=np.int64).tolist()
        items = np.asarray(item_ids, dtype=np.int64).tolist()
        stamps = np.asarray(ts, dtype=np.int64).tolist()
        with self._lock:
            for item, event in zip(items, events, strict=True):
                if 0 < item < len(self._counters):
                    self._online_counters[item, _COUNTER[event]] += 1
                    self._any_online = True
        self._online.record(users, items, events, stamps)

    def _grow_counters(self, n: int) -> None:
        # The online counters first: a reader sizes its ids by the trained ones, so these are
        # never the shorter of the two.
        with self._lock:
            self._online_counters = _grown(self._online_counters, n)
        super()._grow_counters(n)

    def record_shown(self, user_id: int, item_ids: np.ndarray, time_ms: int) -> None:
        """Remembers the page shown to the user until time_ms + shown_ttl_s."""
        self._online.record_shown(int(user_id), np.asarray(item_ids).tolist(), int(time_ms))

    def rebuild(self, events) -> int:
        """Replays an event-log table (pyarrow; columns user_id, item_id, event, timestamp_ms)
        in its order; returns how many events were applied."""
        return replay(self, events)

    def counter_totals(self) -> dict[str, int]:
        """Per event, the sum over all items of what item_counters answers."""
        with self._lock:
            totals = self._counters.sum(axis=0) + self._online_counters.sum(axis=0)
        return {event: int(totals[i]) for event, i in _COUNTER.items()}

    @property
    def online_users(self) -> int:
        return len(self._online)


def replay(store: FeatureStore, events, batch: int = 10_000) -> int:
    """Writes an event-log table into `store` in batches (timestamps ms -> the store's seconds)."""
    n = events.num_rows
    for start in range(0, n, batch):
        part = events.slice(start, batch)
        store.record(
            part.column("user_id").to_numpy(),
            part.column("item_id").to_numpy(),
            part.column("timestamp_ms").to_numpy() // 1000,
            part.column("event").to_pylist(),
        )
    return n


def _grown(rows: np.ndarray, n: int) -> np.ndarray:
    """A copy of `rows` with n rows (the new ones zero)."""
    out = np.zeros((n, *rows.shape[1:]), dtype=rows.dtype)
    out[: len(rows)] = rows
    return out


def _by_id(table: Table, column: str, n_rows: int) -> np.ndarray:
    ids = table["item_id"]
    values = table[column]
    rows = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    rows[ids] = values
    return rows


def check_store_setting(store: str) -> None:
    """The `store` setting: "memory" (embedded) or a redis://host:port/db URL."""
    if store != "memory" and not is_redis_url(store):
        raise ValueError(
            "store must be 'memory', a redis://host:port/db URL or a redis+cluster://host:port "
            f"URL, got {store!r}"
        )
