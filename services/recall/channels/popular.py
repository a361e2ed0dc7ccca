"""Popular channel: trending items by time-decayed play counts; the fallback for unknown users."""

from __future__ import annotations

import numpy as np

from services.recall.channels import RecallContext


class PopularChannel:
    name = "popular"

    def __init__(self, table: dict[str, np.ndarray]):
        self.item_ids = table["item_ids"]  # (n,) best first
        self.scores = table["scores"]  # (n,) float32

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        # The same list for everyone: the merge removes what this user already consumed.
        return self.item_ids[:k], self.scores[:k]
