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
        # CSR (services/recall/tables.py): item i's neighbours are [ptr[i], ptr[i + 1]), best first.
        self.table = table
        self.ptr = table["ptr"]  # (n_items + 1,) int64
        self.neighbours = table["neighbours"]  # (n_pairs,) int64 item ids
        self.weights = table["weights"]  # (n_pairs,) float32
        self.max_recent = max_recent
        self.decay = decay

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        recent = context.recent_items[: self.max_recent]
        recent = recent[(recent > 0) & (recent < len(self.ptr) - 1)]
        if len(recent) == 0:
            return empty()
        starts, counts = self.ptr[recent], self.ptr[recent + 1] - self.ptr[recent]
        seed = np.repeat(np.arange(len(recent)), counts)  # each pair's seed
        pairs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pairs += starts[seed]
        weights = self.weights[pairs] * recency_weights(len(recent), self.decay)[seed]
        items, scores = sum_by_item(self.neighbours[pairs], weights)
        # The seeds themselves are consumed already; a summed EASE weight <= 0 says the seeds
        # speak against the item (co-consumption weights are all positive).
        keep = ~np.isin(items, recent) & (scores > 0)
        return best_first(items[keep], scores[keep], k)
