"""Fresh-content channel: recent uploads chosen by Thompson sampling, matched to the user's tastes.

Each upload of the last `window_s` gets a draw from Beta(prior + engaged, prior + ignored), the
early-engagement counters of the feature store (updated by Feedback), so new items with little
evidence still get exposure. Items uploaded while serving (the store's living catalogue) join the
pool as soon as the store has them. The draw is multiplied by how well the item's categories match
the user's; an unknown user gets pure exploration. Draws are seeded by (user, request time).
"""

from __future__ import annotations

import numpy as np

from cascade.feature_store import FeatureStore
from services.recall.channels import RecallContext, empty
from services.recall.channels.profile import tastes
from services.recall.channels.ranking import best_first

DAY = 86_400


class FreshChannel:
    name = "fresh"

    def __init__(
        self,
        table: dict[str, np.ndarray],
        store: FeatureStore,
        window_s: int = 7 * DAY,
        max_pool: int = 5000,
        prior: float = 1.0,
        taste_floor: float = 0.2,
        max_recent: int = 50,
    ):
        self.item_ids = table["item_ids"]  # (n,) sorted by upload time
        self.upload_ts = table["upload_ts"]  # (n,)
        # Uploads get increasing ids: the ones up to here were folded into the table already.
        self.covered = int(self.item_ids.max(initial=0))
        self.store = store
        self.window_s = window_s
        self.max_pool = max_pool
        self.prior = prior
        self.taste_floor = taste_floor
        self.max_recent = max_recent

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        now = context.request_ts
        lo = np.searchsorted(self.upload_ts, now - self.window_s, side="right")
        hi = np.searchsorted(self.upload_ts, now, side="right")
        pool = self.item_ids[max(lo, hi - self.max_pool) : hi]  # the newest max_pool uploads
        pool = np.concatenate([pool, self._uploaded(now)])[-self.max_pool :]
        if len(pool) == 0:
            return empty()
        counters = self.store.item_counters(pool)
        engaged = counters["play"] + counters["like"]
        ignored = np.maximum(counters["impression"] - counters["play"], 0)
        rng = np.random.default_rng([context.user_id & 0xFFFFFFFF, now & 0xFFFFFFFF])
        draw = rng.beta(self.prior + engaged, self.prior + ignored)
        match = self._match(pool, context.recent_items[: self.max_recent])
        return best_first(pool, (draw * (self.taste_floor + match)).astype(np.float32), k)

    def _uploaded(self, now: int) -> np.ndarray:
        """Items uploaded online (the store's living catalogue) within the window, oldest first:
        they join the pool from the request after their upload."""
        live = self.store.live.items
        ts = live["upload_ts"]
        inside = (ts > now - self.window_s) & (ts <= now) & (live["item_id"] > self.covered)
        return live["item_id"][inside][np.argsort(ts[inside], kind="stable")]

    def _match(self, pool: np.ndarray, recent: np.ndarray) -> np.ndarray:
        """(n,) share of the user's category taste that each pooled item covers (0..1)."""
        if not (recent > 0).any():
            return np.zeros(len(pool))
        _, (categories, shares) = tastes(self.store, recent, decay=0.97)
        if len(categories) == 0:
            return np.zeros(len(pool))
        pool_categories = self.store.item_attributes(pool)["categories"].astype(np.int64)
        slot = np.searchsorted(categories, pool_categories).clip(0, len(categories) - 1)
        found = (pool_categories > 0) & (categories[slot] == pool_categories)
        return np.where(found, shares[slot], 0.0).sum(axis=1)
