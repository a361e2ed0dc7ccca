"""Recall channels. Each turns a RecallContext into (item ids, scores), best first.

A channel is independent of the others and of the wire: the merger (services/recall/merge.py)
applies quotas, removes duplicates (keeping every channel's tag) and filters consumed items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class RecallContext:
    """What a channel knows about one request."""

    user_id: int  # 0 = anonymous / unknown user: personal channels return nothing
    recent_items: np.ndarray  # (n,) int64, newest first: the request's recent ids + store history
    request_ts: int  # Unix seconds
    known_user: bool  # the user has a profile or history in the feature store
    # Every item the user consumed up to the request (sorted), when the caller knows it: offline
    # requests in the past pass what was consumed before them; None = the store's set.
    consumed: np.ndarray | None = None


class Channel(Protocol):
    """One source of candidates. `name` is the short name in cascade.candidates.CHANNELS."""

    name: str

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (item_ids int64, scores float32), best first; empty arrays when it has none."""
        ...


def empty() -> tuple[np.ndarray, np.ndarray]:
    """The answer of a channel with nothing to say."""
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
