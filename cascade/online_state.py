"""Per-user online state of the embedded store, bounded: what Feedback and Recommend add.

Per user: recent plays (capped, ordered by event time, so a late event never becomes the newest),
consumed items (capped, oldest dropped first) and items shown with an expiry (TTL, capped). Users
live in an LRU map: beyond `max_users` the least recently active are forgotten (the event log
still holds their events). Nothing here is sized by the value of an id, only by how many there are.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass

CONSUMPTION = frozenset({"play", "complete", "like", "share"})  # what "already consumed" means


@dataclass(frozen=True)
class StoreLimits:
    """Caps on per-user online state, shared by both store backends."""

    recent_plays: int = 50  # plays kept per user (history reads the newest history_length)
    consumed: int = 1000  # consumed items kept per user (the oldest go first)
    shown: int = 500  # shown items kept per user (the soonest to expire go first)
    shown_ttl_s: float = 3600.0  # an item shown longer ago than this may be shown again
    max_users: int = 100_000  # embedded store: users kept in memory (LRU beyond)
    user_ttl_s: int = 30 * 86_400  # Redis: a user's keys expire this long after their last event
    dedupe_ttl_s: int = 86_400  # Redis: how long a repeated event is recognised and skipped
    refresh_s: float = 1.0  # Redis: item counters snapshot refresh period

    def __post_init__(self) -> None:
        for name in ("recent_plays", "consumed", "shown", "max_users", "user_ttl_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shown_ttl_s <= 0 or self.refresh_s <= 0 or self.dedupe_ttl_s < 1:
            raise ValueError("shown_ttl_s and refresh_s must be > 0, dedupe_ttl_s >= 1")


class UserState:
    __slots__ = ("plays", "consumed", "shown")

    def __init__(self) -> None:
        self.plays: list[tuple[int, int, int]] = []  # (ts, arrival, item), oldest first
        self.consumed: dict[int, int] = {}  # item -> ts, in arrival order
        self.shown: dict[int, int] = {}  # item -> expiry (ms), in arrival order


class OnlineUsers:
    """The embedded backend's per-user state (thread-safe)."""

    def __init__(self, limits: StoreLimits):
        self.limits = limits
        self._users: OrderedDict[int, UserState] = OrderedDict()
        self._arrival = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def record(self, users: list[int], items: list[int], events: list[str], ts: list[int]) -> None:
        limits = self.limits
        with self._lock:
            for user, item, event, t in zip(users, items, events, ts, strict=True):
                if event not in CONSUMPTION:
                    continue
                state = self._touch(user)
                state.consumed.pop(item, None)
                state.consumed[item] = t
                if len(state.consumed) > limits.consumed:
                    del state.consumed[next(iter(state.consumed))]
                if event == "play":
                    self._arrival += 1
                    bisect.insort(state.plays, (t, self._arrival, item))
                    if len(state.plays) > limits.recent_plays:
                        del state.plays[0]  # the oldest by event time
            self._evict()

    def record_shown(self, user: int, items: list[int], time_ms: int) -> None:
        expiry = time_ms + int(self.limits.shown_ttl_s * 1000)
        with self._lock:
            state = self._touch(user)
            state.shown = {i: e for i, e in state.shown.items() if e > time_ms}
            for item in items:
                state.shown.pop(item, None)
                state.shown[item] = expiry
            while len(state.shown) > self.limits.shown:
                del state.shown[next(iter(state.shown))]
            self._evict()

    def recent_plays(self, user: int, n: int) -> list[int]:
        """The user's newest `n` online plays, newest first."""
        with self._lock:
            state = self._users.get(user)
            return [] if state is None else [p[2] for p in state.plays[::-1][:n]]

    def consumed(self, user: int) -> list[int]:
        with self._lock:
            state = self._users.get(user)
            return [] if state is None else list(state.consumed)

    def recent_consumed(self, user: int, n: int) -> list[int]:
        """The user's newest `n` consumed items by event time, newest first."""
        with self._lock:
            state = self._users.get(user)
            if state is None:
                return []
            ranked = sorted(state.consumed.items(), key=lambda kv: kv[1], reverse=True)
        return [item for item, _ in ranked[:n]]

    def shown(self, user: int, now_ms: int) -> list[int]:
        with self._lock:
            state = self._users.get(user)
            return [] if state is None else [i for i, e in state.shown.items() if e > now_ms]

    # -- lock held -------------------------------------------------------------------------------
    def _touch(self, user: int) -> UserState:
        state = self._users.pop(user, None) or UserState()
        self._users[user] = state  # most recently active last
        return state

    def _evict(self) -> None:
        while len(self._users) > self.limits.max_users:
            self._users.popitem(last=False)
