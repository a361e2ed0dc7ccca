"""Item-CF channel: neighbours of the user's recent items from the offline co-consumption table.

The table (services/recall/tables.py) holds each item's top neighbours by time-decayed,
popularity-penalised co-consumption, or (recall trained with `--item-cf ease`) by EASE's signed
item-item weights. The request's recent items include what Feedback recorded seconds ago, so a
play shows up in the very next answer.
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
        # The seeds themselves are consumed already; a summed EASE weight <= 0 says the seeds
        # speak against the item (co-consumption weights are all positive).
        keep = ~np.isin(items, recent) & (scores > 0)
        return best_first(items[keep], scores[keep], k)
