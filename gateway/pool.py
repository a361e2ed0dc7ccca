"""The traffic pool at the gateway: page slots for young uploads, fed by recall's candidates.

A new upload has no plays, so pre-rank and rank score it from metadata and it rarely survives
their cuts (`python -m bench.cold_start_funnel`). After the funnel, the pool (the arm's `pool`
settings, cascade/traffic_pool.py) looks at recall's candidates younger than the pool's window,
reads what each was delivered so far (impressions and plays from Feedback: the shared store's
counters with Redis, `PoolCounters` here otherwise), and offers each a slot: to a follower of
its creator (the social channel proposed it) at once while it is in the pool, to anyone else with
the controller's boost times the user's taste match from the funnel's own order (pre-rank, a
two-tower student, kept it: 0.5 to 1 by its place there; not kept: below 0.5 by its place in
recall). The draws are seeded by
the request id, so a replay decides the same. Seen, consumed, on-page and already-pooled items
are never taken, so a page holds no duplicate and a user gets an upload once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cascade import traffic_pool
from cascade.candidates import Candidates, channel_bit, from_proto
from cascade.feature_store import EVENTS
from cascade.traffic_pool import PoolSettings
from cascade.v1 import common_pb2, gateway_pb2

if TYPE_CHECKING:
    from cascade.redis_store import RedisState

SOCIAL = channel_bit("social")
BASELINE_TTL_S = 1.0  # wall seconds a computed baseline rate serves (Pool.baseline)
_IMPRESSION, _PLAY = EVENTS.index("impression"), EVENTS.index("play")


def draws(request_id: str, n: int) -> np.ndarray:
    """n uniform draws in [0, 1) seeded by the request id (a replay draws the same)."""
    seed = int.from_bytes(hashlib.sha256(f"pool:{request_id}".encode()).digest()[:8], "big")
    return np.random.default_rng(seed).random(n)


def young_uploads(
    recall: Candidates,
    uploaded_s: np.ndarray,
    now_s: int,
    window_s: int,
    excluded: np.ndarray,
) -> np.ndarray:
    """Positions in `recall` of the items uploaded within `window_s` before `now_s` (upload time
    0 = not an upload the gateway knows of), in recall's order, none in `excluded`, each once."""
    ids = np.asarray(recall.item_ids, dtype=np.int64)
    inside = (ids > 0) & (ids < len(uploaded_s))
    upload = np.where(inside, uploaded_s[np.where(inside, ids, 0)], 0)
    age = now_s - upload
    young = inside & (upload > 0) & (age >= 0) & (age < window_s) & ~np.isin(ids, excluded)
    _, first = np.unique(ids, return_index=True)
    young &= np.isin(np.arange(len(ids)), first)
    return np.flatnonzero(young)


def taste_match(
    recall: Candidates, positions: np.ndarray, prerank_ids: np.ndarray | None
) -> np.ndarray:
    """The user's match with each upload at `positions`, in [0, 1], from the funnel's order:
    kept by pre-rank at rank r of n: 1 - r / (2n), above 0.5; not kept (or no pre-rank):
    0.5 x (m - p) / (m + 1), below 0.5, p its position in recall's list of m."""
    m = len(recall.item_ids)
    match = 0.5 * (m - positions) / (m + 1)
    if prerank_ids is None or not len(prerank_ids):
        return match
    where = {item: rank for rank, item in enumerate(np.asarray(prerank_ids).tolist())}
    n = len(where)
    for i, item in enumerate(recall.item_ids[positions].tolist()):
        rank = where.get(item)
        if rank is not None:
            match[i] = 1 - rank / (2 * n)
    return match


class PoolCounters:
    """Impressions and plays per item from Feedback, for the embedded store (with Redis the
    gateway reads the shared counters every replica writes: `shared_counts`). Grows with ids."""

    def __init__(self) -> None:
        self._counts = np.zeros((1, 2), dtype=np.int64)  # item -> (impressions, plays)
        self._lock = threading.Lock()

    def record(self, item_ids: np.ndarray, names: list[str]) -> None:
        names_array = np.asarray(names)
        column = np.where(names_array == "impression", 0, np.where(names_array == "play", 1, -1))
        keep = column >= 0
        items = np.asarray(item_ids, np.int64)[keep]
        if not len(items):
            return
        with self._lock:
            if items.max() >= len(self._counts):
                grown = np.zeros((max(items.max() + 1, 2 * len(self._counts)), 2), np.int64)
                grown[: len(self._counts)] = self._counts
                self._counts = grown
            np.add.at(self._counts, (items, column[keep]), 1)

    def counts(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self._counts
        ids = np.asarray(item_ids, np.int64)
        inside = ids < len(counts)
        rows = counts[np.where(inside, ids, 0)] * inside[:, None]
        return rows[:, 0], rows[:, 1]


def shared_counts(shared: RedisState) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(impressions, plays) per item from the shared store's counters snapshot (refreshed in
    the background every `store_limits.refresh_s`)."""

    def counts(item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        snapshot = shared.snapshot
        ids = np.asarray(item_ids, np.int64)
        inside = ids < len(snapshot)
        rows = snapshot[np.where(inside, ids, 0)] * inside[:, None]
        return rows[:, _IMPRESSION], rows[:, _PLAY]

    return counts


class Pool:
    """The gateway's side of the pool: its counters, the users each upload went to, and one
    `fill` per Recommend."""

    def __init__(self, counts: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
        self.counts = counts
        self.given = GivenMemory()
        self.now_s = 0  # the latest request's time: the metrics' "now" on the simulated clock
        self._baseline: tuple[tuple, float, float] | None = None  # key, rate, when: `baseline`

    def served(self, user_id: int, pooled: list[int], now_ms: int, ttl_ms: int) -> None:
        """Remembers a served (not explained) page: its pool items go to `user_id` once within
        `ttl_ms`, and its time moves the metrics' clock. `fill` itself changes nothing, so an
        explained Recommend leaves the pool as it was."""
        self.now_s = max(self.now_s, now_ms // 1000)
        self.given.record(user_id, pooled, now_ms, ttl_ms)

    def fill(
        self,
        response: gateway_pb2.RecommendResponse,
        page: Candidates,
        lists: dict[str, common_pb2.CandidateList],
        user: common_pb2.UserContext,
        seen: np.ndarray,
        settings: PoolSettings,
        count: int,
        uploaded_s: np.ndarray,
        request_id: str,
        creators: np.ndarray,
        max_per_creator: int,
    ) -> tuple[Candidates, int]:
        """`page` with pool slots given to recall's young uploads that win their draw, the slots
        in `response.explored_positions`, traced as stage "pool" when there were young uploads
        (candidates_in: how many, candidates_out: the slots given); and how many there were. A
        creator at the page's cap (`max_per_creator`, 0 = none) gets no slot. Without recall's
        own answer (its fallback, the popular cache, answered) the pool has nothing to offer."""
        started = time.perf_counter()
        recall_list = lists.get("recall")
        if recall_list is None or "recall" in response.degraded_stages:
            return page, 0
        now_ms = user.request_time_ms
        excluded = np.concatenate([page.item_ids, seen, self.given.recent(user.user_id, now_ms)])
        recall = from_proto(recall_list)
        young = young_uploads(
            recall, uploaded_s, now_ms // 1000, settings.window_s, excluded.astype(np.int64)
        )
        if max_per_creator and len(young):
            young = young[~at_cap(recall.item_ids[young], page.item_ids, creators, max_per_creator)]
        if not len(young):
            return page.take(slice(0, count)), 0
        ids = recall.item_ids[young]
        delivered, plays = self.counts(ids)
        rate = self.baseline(settings, uploaded_s, now_ms // 1000)
        age = now_ms // 1000 - uploaded_s[ids]
        state, _, boost = traffic_pool.status(settings, age, delivered, plays, rate)
        prerank = lists.get("prerank")  # absent when the arm skips pre-rank
        prerank_ids = None if prerank is None else np.asarray(prerank.item_ids, np.int64)
        follower = (recall.channel_masks[young] & SOCIAL) > 0
        match = taste_match(recall, young, prerank_ids)
        chosen = traffic_pool.choose(
            state, boost, follower, match, draws(request_id, len(young)), settings.slots
        )
        picks = young[chosen]
        page, given = place(page, recall.take(picks), settings.position, count)
        response.explored_positions.extend(given)
        response.trace.add(
            stage="pool",
            latency_ms=(time.perf_counter() - started) * 1000,
            candidates_in=len(young),
            candidates_out=len(given),
        )
        return page, len(young)

    def in_window(self, uploaded_s: np.ndarray, now_s: int, window_s: int) -> np.ndarray:
        """Ids of the uploads younger than the window at `now_s`."""
        age = now_s - uploaded_s
        return np.flatnonzero((uploaded_s > 0) & (age >= 0) & (age < window_s))

    def baseline(self, settings: PoolSettings, uploaded_s: np.ndarray, now_s: int) -> float:
        """The window's uploads' rate, at most BASELINE_TTL_S old for the same request time,
        settings and catalogue: it passes over every item's upload time and every young
        upload's counters, which at a million items cost more than the rest of `fill`."""
        key = (now_s, settings, len(uploaded_s))
        now = time.monotonic()
        if self._baseline is not None:
            cached_key, rate, when = self._baseline
            if cached_key == key and now - when < BASELINE_TTL_S:
                return rate
        delivered, plays = self.counts(self.in_window(uploaded_s, now_s, settings.window_s))
        rate = traffic_pool.baseline(settings, delivered, plays)
        self._baseline = (key, rate, now)
        return rate


def at_cap(ids: np.ndarray, page: np.ndarray, creators: np.ndarray, cap: int) -> np.ndarray:
    """Which of `ids` have a creator (known, not 0) with `cap` items on `page` already."""

    def creator_of(items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, np.int64)
        inside = (items > 0) & (items < len(creators))
        return np.where(inside, creators[np.where(inside, items, 0)], 0)

    on_page = creator_of(page)
    counts = dict(zip(*np.unique(on_page[on_page > 0], return_counts=True), strict=True))
    return np.array([counts.get(c, 0) >= cap for c in creator_of(ids).tolist()], dtype=bool)


def place(
    page: Candidates, picks: Candidates, position: int, count: int
) -> tuple[Candidates, list[int]]:
    """`picks` inserted into `page` from `position` (LAST_SLOTS: the page's last slots; beyond
    the page's end: right after it), the page cut back to `count`; returns it and the pool's
    positions. The organic items below the slots move down, the last ones drop off."""
    start, n = traffic_pool.place_slots(len(page.item_ids), len(picks.item_ids), position, count)
    picks = picks.take(slice(0, n))
    if not n:
        return page.take(slice(0, count)), []
    organic = page.take(slice(0, count - n))
    merged = Candidates(
        *(np.concatenate([a[:start], b, a[start:]]) for a, b in zip(organic, picks, strict=True))
    )
    return merged, list(range(start, start + n))


class GivenMemory:
    """Per user, the uploads the pool gave them lately (the embedded store's rerank never saw
    them, so its already-shown filter cannot): an upload goes to a user once within `ttl_ms`.
    The least recently served users are forgotten beyond `max_users` (memory stays bounded)."""

    def __init__(self, max_users: int = 100_000, per_user: int = 64):
        self.max_users, self.per_user = max_users, per_user
        self._items: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()  # (item, until_ms)
        self._lock = threading.Lock()

    def recent(self, user_id: int, at_ms: int) -> np.ndarray:
        with self._lock:
            entries = self._items.get(int(user_id), ())
            return np.array([item for item, until in entries if until > at_ms], dtype=np.int64)

    def record(self, user_id: int, item_ids: list[int], at_ms: int, ttl_ms: int) -> None:
        if user_id <= 0 or not item_ids:
            return
        with self._lock:
            entries = [e for e in self._items.pop(int(user_id), []) if e[1] > at_ms]
            entries += [(int(item), at_ms + ttl_ms) for item in item_ids]
            self._items[int(user_id)] = entries[-self.per_user :]
            while len(self._items) > self.max_users:
                self._items.popitem(last=False)


class PoolCollector(Collector):
    """Delivered against target impressions of the uploads inside the pool's window, and the
    uploads per state, computed at scrape time from the counters (on the latest request's
    clock, so a simulated clock reads right)."""

    def __init__(
        self,
        pool: Pool,
        settings: Callable[[], PoolSettings],
        uploaded: Callable[[], np.ndarray],
    ):
        self.pool, self.settings, self.uploaded = pool, settings, uploaded

    def describe(self) -> list:
        return []  # collected on scrape only: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        settings, uploaded = self.settings(), self.uploaded()
        now_s = self.pool.now_s
        ids = np.asarray(
            self.pool.in_window(uploaded, now_s, settings.window_s) if now_s else [], np.int64
        )
        delivered, plays = self.pool.counts(ids)
        rate = traffic_pool.baseline(settings, delivered, plays)
        state, target, _ = traffic_pool.status(
            settings, now_s - uploaded[ids], delivered, plays, rate
        )
        impressions = GaugeMetricFamily(
            "cascade_gateway_pool_impressions",
            "Impressions of the uploads inside the traffic pool's window: delivered so far (from "
            "Feedback) and their targets (K, or the extended target).",
            labels=["kind"],
        )
        impressions.add_metric(["delivered"], float(np.sum(np.minimum(delivered, target))))
        impressions.add_metric(["target"], float(np.sum(target)))
        yield impressions
        uploads = GaugeMetricFamily(
            "cascade_gateway_pool_uploads",
            "Uploads inside the traffic pool's window by state: boosting, extended (engaging "
            "well: a raised target), stopped_early (engaging poorly), done (target reached).",
            labels=["state"],
        )
        for code, name in traffic_pool.STATES.items():
            uploads.add_metric([name], float(np.sum(state == code)))
        yield uploads
        served = GaugeMetricFamily(
            "cascade_gateway_pool_setting",
            "The traffic pool's served settings: slots per page, the target K, the window (s).",
            labels=["setting"],
        )
        for name in ("slots", "target", "window_s"):
            served.add_metric([name], float(getattr(settings, name)))
        yield served
        yield GaugeMetricFamily(
            "cascade_gateway_pool_clock_seconds",
            "The pool's now: the latest served request's time (s; 0 before the first).",
            value=float(now_s),
        )


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.slots = Counter(
            "cascade_gateway_pool_slots",
            "Page slots the traffic pool gave to a young upload (gateway/pool.py), by arm.",
            ["arm"],
            registry=registry,
        )
        self.empty = Counter(
            "cascade_gateway_pool_empty",
            "Requests with the pool on whose recall held no young upload to offer, by arm.",
            ["arm"],
            registry=registry,
        )
