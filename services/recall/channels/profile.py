"""Profile ("index") channel: popular and recent items of the user's top creators and categories.

Tastes come from the user's recent items (store history plus the request's own), weighted by
recency; the per-creator and per-category item lists are precomputed offline, and items uploaded
while serving (the store's living catalogue) join them at once.
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
        # Uploads get increasing ids: the ones up to here were folded into the index already.
        self.covered = int(max(table["creator_items"].max(initial=0), 0))
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
            self._uploaded(creators, creator_share, categories, category_share, context),
        ]
        items = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        items, scores = sum_by_item(items, scores)
        return best_first(items, scores, k)

    def _uploaded(self, creators, creator_share, categories, category_share, context):
        """Items uploaded online by the user's top creators or in their top categories (not in
        the offline index yet), scored as an average item of the group: share x (0.5 + 0.5)."""
        live = self.store.live.items
        visible = (live["upload_ts"] <= context.request_ts) & (live["item_id"] > self.covered)
        if not visible.any():
            return empty()
        creator_share = np.where(creators > 0, creator_share, 0)  # 0 = unknown / padding
        category_share = np.where(categories > 0, category_share, 0)
        top_creators = np.lexsort((creators, -creator_share))[: self.top_creators]
        top_categories = np.lexsort((categories, -category_share))[: self.top_categories]
        share = np.zeros(len(visible), np.float32)
        for group, value in zip(creators[top_creators], creator_share[top_creators], strict=True):
            share += np.where(live["creator_id"] == group, value, 0.0).astype(np.float32)
        cats = live["categories"]
        for group, value in zip(
            categories[top_categories], category_share[top_categories], strict=True
        ):
            share += np.where((cats == group).any(axis=1), value, 0.0).astype(np.float32)
        found = visible & (share > 0)
        return live["item_id"][found], share[found]

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
