"""Exploration slots: a few page slots reserved for recent uploads, set aside after recall.

A new upload has no plays, so pre-rank and rank score it from metadata and it almost never
survives their cuts (`python -m bench.cold_start_funnel`); without impressions it never gets the
plays the daily retrain would learn it from. An arm with `explore_slots` > 0 (gateway/arms.py)
therefore takes, on a request that explores (probability `explore_rate`, decided by the request
id so a replay decides the same), the best uploads younger than `explore_max_age_s` among
recall's candidates (those pre-rank kept, in its order, then the rest in recall's order) and puts
them at `explore_position` on the page, where they need not win the funnel. Seen, consumed,
already-explored and on-page items are never taken, so the page holds no duplicate.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from cascade.candidates import Candidates, from_proto
from cascade.v1 import common_pb2, gateway_pb2

if TYPE_CHECKING:
    from gateway.pipeline import Funnel

LAST_SLOTS = -1  # explore_position default: the page's last explore_slots slots


def explores(request_id: str, rate: float) -> bool:
    """Whether this request explores: sha256(request_id) read as a number in [0, 1) below
    `rate`. Seeded by the id alone, so the decision (and its propensity, `rate`) is known from
    the impression record."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"explore:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def recent_uploads(
    recall: Candidates,
    prerank_ids: np.ndarray | None,
    uploaded_s: np.ndarray,
    now_s: int,
    max_age_s: int,
    excluded: np.ndarray,
) -> np.ndarray:
    """Positions in `recall` of the items uploaded within `max_age_s` before `now_s` (upload
    time 0 = not an upload the gateway knows of), best first: the ones pre-rank kept in its
    order, then the rest in recall's order; none in `excluded`, each once."""
    ids = np.asarray(recall.item_ids, dtype=np.int64)
    inside = (ids > 0) & (ids < len(uploaded_s))
    upload = np.where(inside, uploaded_s[np.where(inside, ids, 0)], 0)
    age = now_s - upload
    young = inside & (upload > 0) & (age >= 0) & (age <= max_age_s) & ~np.isin(ids, excluded)
    _, first = np.unique(ids, return_index=True)
    young &= np.isin(np.arange(len(ids)), first)
    positions = np.flatnonzero(young)
    if prerank_ids is None or not len(positions):
        return positions
    prerank_ids = np.asarray(prerank_ids, dtype=np.int64)
    order = np.full(len(positions), len(prerank_ids), dtype=np.int64)  # not kept: after
    kept = np.isin(ids[positions], prerank_ids)
    where = {item: rank for rank, item in enumerate(prerank_ids.tolist())}
    order[kept] = [where[item] for item in ids[positions][kept].tolist()]
    return positions[np.lexsort((positions, order))]


def place(
    page: Candidates, picks: Candidates, position: int, count: int
) -> tuple[Candidates, list[int]]:
    """`picks` inserted into `page` from `position` (LAST_SLOTS: the page's last slots; beyond
    the page's end: right after it), the page cut back to `count`; returns it and the explored
    positions. The organic items below the slots move down, the last ones drop off."""
    n = min(len(picks.item_ids), count)
    picks = picks.take(slice(0, n))
    if not n:
        return page.take(slice(0, count)), []
    start = count - n if position == LAST_SLOTS else min(position, count - n)
    organic = page.take(slice(0, count - n))
    start = min(start, len(organic.item_ids))  # a short page: the slots follow its items
    merged = Candidates(
        *(np.concatenate([a[:start], b, a[start:]]) for a, b in zip(organic, picks, strict=True))
    )
    return merged, list(range(start, start + n))


def explore_page(
    response: gateway_pb2.RecommendResponse,
    page: Candidates,
    lists: dict[str, common_pb2.CandidateList],
    user: common_pb2.UserContext,
    seen: np.ndarray,
    funnel: Funnel,
    count: int,
    uploaded_s: np.ndarray,
    memory: ExploredMemory,
) -> tuple[Candidates, int]:
    """`page` with its explore slots given to recall's best recent uploads (none on the page,
    in `seen`, or explored to this user lately), the slots put in `response.explored_positions`
    and traced as stage "explore" (candidates_in: the eligible uploads, candidates_out: the
    slots given), and how many were eligible. `lists`: each stage's answer (Served.lists); the
    explored items keep recall's scores and channel tags."""
    started = time.perf_counter()
    recall_list = lists.get("recall")
    if recall_list is None:
        return page, 0
    prerank = lists.get("prerank")  # absent when the arm skips pre-rank
    now_ms = user.request_time_ms
    excluded = np.concatenate([page.item_ids, seen, memory.recent(user.user_id, now_ms)])
    recall = from_proto(recall_list)
    eligible = recent_uploads(
        recall,
        None if prerank is None else np.asarray(prerank.item_ids, dtype=np.int64),
        uploaded_s,
        now_ms // 1000,
        funnel.explore_max_age_s,
        excluded.astype(np.int64),
    )
    page, explored = place(
        page, recall.take(eligible[: funnel.explore_slots]), funnel.explore_position, count
    )
    response.explored_positions.extend(explored)
    response.trace.add(
        stage="explore",
        latency_ms=(time.perf_counter() - started) * 1000,
        candidates_in=len(eligible),
        candidates_out=len(explored),
    )
    return page, len(eligible)


class ExploredMemory:
    """Per user, the items explored to them lately (the embedded store's rerank never saw them,
    so its already-shown filter cannot): an upload is explored to a user once within `ttl_ms`.
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
