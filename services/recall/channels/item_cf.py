"""Item-CF channel: neighbours of the user's recent items from the offline co-consumption table.

The table (services/recall/tables.py) holds each item's top neighbours by time-decayed,
popularity-penalised co-consumption. The request's recent items include what Feedback recorded
seconds ago, so a play shows up in the very next answer.
"""

from __future__ import annotations

import numpy as np

from services.recall.channels import RecallContext, empty
from services.recall.channels.ranking import best_first, recency_weights, sum_by_item


class ItemCFChannel:
    name = "item_cf"

    def __init__(self, table: dict[str, np.ndarray], max_recent: int = 20, decay: float = 0.9):
        self.neighbours = table["neighbours"]  # (n_items, n_neighbours) int64, 0-padded
        self.weights = table["weights"]  # (n_items, n_neighbours) float32
        self.max_recent = max_recent
        self.decay = decay

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        recent = context.recent_items[: self.max_recent]
        recent = recent[(recent > 0) & (recent < len(self.neighbours))]
        if len(recent) == 0:
            return empty()
        weights = self.weights[recent] * recency_weights(len(recent), self.decay)[:, None]
        items, scores = sum_by_item(self.neighbours[recent].ravel(), weights.ravel())
        fresh = ~np.isin(items, recent)  # the seeds themselves are consumed already
        return best_first(items[fresh], scores[fresh], k)
