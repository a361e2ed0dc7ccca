"""Profile ("index") channel: popular and recent items of the user's top creators and categories.

Tastes come from the user's recent items (store history plus the request's own), weighted by
recency; the per-creator and per-category item lists are precomputed offline.
"""

from __future__ import annotations

import numpy as np

from cascade.feature_store import FeatureStore
from services.recall.channels import RecallContext, empty
from services.recall.channels.ranking import (
    best_first,
    csr_positions,
    recency_weights,
    sum_by_item,
)


def tastes(
    store: FeatureStore, recent_items: np.ndarray, decay: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((creators, shares), (categories, shares)) of the recent items, shares summing to 1."""
    recent = recent_items[recent_items > 0]
    attributes = store.item_attributes(recent)
    weight = recency_weights(len(recent), decay)
    creators = sum_by_item(attributes["creator_id"], weight)
    categories = attributes["categories"].astype(np.int64)  # (m, 6), 0-padded
    category_weight = np.broadcast_to(weight[:, None], categories.shape)
    by_category = sum_by_item(categories.ravel(), category_weight.ravel())
    return _shares(*creators), _shares(*by_category)


def _shares(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = weights.sum()
    return ids, (weights / total if total > 0 else weights).astype(np.float32)


class ProfileChannel:
    name = "profile"

    def __init__(
        self,
        table: dict[str, np.ndarray],
        store: FeatureStore,
        top_creators: int = 5,
        top_categories: int = 3,
        max_recent: int = 50,
        decay: float = 0.97,
    ):
        self.table = table
        self.store = store
        self.top_creators = top_creators
        self.top_categories = top_categories
        self.max_recent = max_recent
        self.decay = decay

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        recent = context.recent_items[: self.max_recent]
        if not (recent > 0).any():
            return empty()
        (creators, creator_share), (categories, category_share) = tastes(
            self.store, recent, self.decay
        )
        parts = [
            self._index("creator", creators, creator_share, self.top_creators),
            self._index("category", categories, category_share, self.top_categories),
        ]
        items = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        items, scores = sum_by_item(items, scores)
        return best_first(items, scores, k)

    def _index(
        self, kind: str, groups: np.ndarray, shares: np.ndarray, top: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items of the `top` groups by share, scored share x the item's rank-normalised score."""
        indptr = self.table[f"{kind}_ptr"]
        inside = (groups > 0) & (groups < len(indptr) - 1)
        groups, shares = groups[inside], shares[inside]
        chosen = np.lexsort((groups, -shares))[:top]
        row_of, positions = csr_positions(indptr, groups[chosen])
        item_scores = self.table[f"{kind}_scores"][positions]
        # Scores of different groups are not comparable: normalise by each group's best.
        best = np.zeros(len(chosen), dtype=np.float32)
        np.maximum.at(best, row_of, item_scores)
        relative = item_scores / np.maximum(best[row_of], 1e-6)
        return self.table[f"{kind}_items"][positions], shares[chosen][row_of] * (0.5 + relative)
