"""What the gateway knows of users' online activity, by store backend.

Embedded store (`store = "memory"`): each stage process holds its own state, so the gateway keeps
its own record (`OnlineEvents`) and sends it with every stage request as
`UserContext.recent_item_ids` (newest first); recall, rank and rerank put it in front of the
stored history and filter it as consumed, so the very next Recommend reflects a Feedback whatever
stage process answers. With Redis every stage reads the shared store itself: the gateway sends no
recent ids, writes each event once, and records the pages it answered (gateway/impressions.py,
off the answer's critical path) for rerank's already-shown filter.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from cascade.feature_store import CONSUMPTION


class OnlineEvents:
    """Per user, the items consumed online, newest first by the event's own time, each once (at
    its latest time), at most `per_user` of them; the least recently active users are forgotten
    beyond `max_users` (memory stays bounded). A late event lands at its time, not in front."""

    def __init__(self, per_user: int, max_users: int = 100_000):
        if per_user < 1 or max_users < 1:
            raise ValueError("per_user and max_users must be >= 1")
        self.per_user = per_user
        self.max_users = max_users
        # user -> [(-timestamp_ms, item)], ascending: newest first
        self._recent: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def record(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        names: Sequence[str],
        timestamps_ms: np.ndarray | None = None,
    ) -> None:
        """Applies events; only consumption events count. Without timestamps, the order given
        is the order they happened (each newer than anything before)."""
        n = len(names)
        if timestamps_ms is None:
            timestamps_ms = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        rows = zip(user_ids.tolist(), item_ids.tolist(), names, timestamps_ms.tolist(), strict=True)
        with self._lock:
            for user, item, name, stamp in rows:
                if name not in CONSUMPTION:
                    continue
                entries = self._recent.pop(user, [])
                old = next((e for e in entries if e[1] == item), None)
                if old is not None and old[0] < -stamp:  # already there at a later time
                    self._recent[user] = entries
                    continue
                entries = [e for e in entries if e[1] != item]
                # Equal times: the later arrival goes first (bisect_left puts it before ties).
                bisect.insort_left(entries, (-stamp, item), key=lambda e: e[0])
                self._recent[user] = entries[: self.per_user]
            while len(self._recent) > self.max_users:
                self._recent.popitem(last=False)

    def recent(self, user_id: int) -> list[int]:
        """The user's online items, newest first ([] for a user with none)."""
        with self._lock:
            return [item for _, item in self._recent.get(int(user_id), ())]
