"""The gateway's own record of what users just did, sent with every stage request.

Each stage process keeps its own feature store built from the training period; the events that
arrive online reach them as `UserContext.recent_item_ids` (newest first), which recall, rank and
rerank put in front of the stored history and filter as consumed. So the very next Recommend
after a Feedback reflects it, whatever stage process answers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from cascade.feature_store import CONSUMPTION


class OnlineEvents:
    """Per user, the items consumed online, newest first, each once, at most `per_user` of them;
    the least recently active users are forgotten beyond `max_users` (memory stays bounded)."""

    def __init__(self, per_user: int, max_users: int = 100_000):
        if per_user < 1 or max_users < 1:
            raise ValueError("per_user and max_users must be >= 1")
        self.per_user = per_user
        self.max_users = max_users
        self._recent: OrderedDict[int, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, user_ids: np.ndarray, item_ids: np.ndarray, names: Sequence[str]) -> None:
        """Applies events in the order they happened; only consumption events count."""
        with self._lock:
            for user, item, name in zip(user_ids.tolist(), item_ids.tolist(), names, strict=True):
                if name not in CONSUMPTION:
                    continue
                items = [i for i in self._recent.pop(user, []) if i != item]
                self._recent[user] = [item, *items][: self.per_user]
            while len(self._recent) > self.max_users:
                self._recent.popitem(last=False)

    def recent(self, user_id: int) -> list[int]:
        """The user's online items, newest first ([] for a user with none)."""
        with self._lock:
            return list(self._recent.get(int(user_id), ()))
