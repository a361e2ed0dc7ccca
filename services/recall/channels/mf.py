"""MF channel: the user's whole history folded into a query vector, then a FAISS inner-product
search over matrix-factorisation-family item vectors (services/recall/mf.py builds them).

EASE (small catalogs): the query is the multi-hot of the history, so the search returns EASE's own
top-k. PureSVD (large catalogs): the query is the sum of the history's item factors. The history
is the store's consumed set plus the request's recent items (plays seconds old count at once), or
the context's own consumed set when an offline request in the past carries one.
"""

from __future__ import annotations

import faiss
import numpy as np

from cascade.artifacts import ArtifactError, Bundle
from cascade.feature_store import FeatureStore
from cascade.mf import COMPONENT, FOLD_IN, INFO_KEY, ITEM_INDEX, ITEM_VECTORS  # noqa: F401
from services.recall.channels import RecallContext, empty
from services.recall.index import IndexSettings, load_index, search


class MFChannel:
    name = "mf"

    def __init__(
        self,
        index: faiss.Index,
        fold_in: np.ndarray,
        store: FeatureStore,
        max_k: int = 2_000,
        index_settings: IndexSettings | None = None,
    ):
        """fold_in: (n_items, dim) per-item query rows, or an empty array for the identity."""
        self.index, self.store, self.max_k = index, store, max_k
        self.fold_in = fold_in if fold_in.size else None
        self.n_items = index.ntotal + 1  # index position p is item id p + 1
        self.index_settings = index_settings or IndexSettings()

    @classmethod
    def from_bundle(cls, bundle: Bundle, store: FeatureStore, max_k: int = 2_000) -> MFChannel:
        info = bundle.component(COMPONENT).get(INFO_KEY)
        if info is None:
            raise ArtifactError(f"{bundle.folder}/{COMPONENT}: no MF model in the bundle")
        index = load_index(bundle.file(COMPONENT, ITEM_INDEX))
        fold_in = bundle.load_npz(COMPONENT, FOLD_IN)["fold_in"]
        if index.ntotal != info["n_items"] - 1 or index.d != info["dim"]:
            raise ArtifactError(
                f"{bundle.folder / COMPONENT / ITEM_INDEX}: {index.ntotal} vectors of dim "
                f"{index.d}, expected {info['n_items'] - 1} of dim {info['dim']}"
            )
        if fold_in.size and fold_in.shape != (info["n_items"], info["dim"]):
            raise ArtifactError(
                f"{bundle.folder / COMPONENT / FOLD_IN}: shape {fold_in.shape}, expected "
                f"({info['n_items']}, {info['dim']})"
            )
        return cls(index, fold_in, store, max_k)

    def query(
        self, user_id: int, recent_items: np.ndarray, consumed: np.ndarray | None = None
    ) -> np.ndarray:
        """(1, dim) float32 query: the folded-in history (consumed set + recent items)."""
        if consumed is None:
            consumed = self.store.consumed(int(user_id))
        history = np.union1d(consumed, recent_items)
        history = history[(history > 0) & (history < self.n_items)]
        if self.fold_in is None:
            vector = np.zeros((1, self.index.d), dtype=np.float32)
            vector[0, history] = 1.0
            return vector
        return self.fold_in[history].sum(axis=0, keepdims=True, dtype=np.float32)

    def retrieve(self, context: RecallContext, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by the model's score for the folded-in history, best first."""
        if k <= 0 or (context.user_id <= 0 and len(context.recent_items) == 0):
            return empty()
        vector = self.query(context.user_id, context.recent_items, context.consumed)
        if not vector.any():
            return empty()  # no history: the model has nothing to fold in
        ids, scores = search(self.index, vector, min(k, self.max_k), self.index_settings)
        found = ids[0] > 0
        return ids[0][found].astype(np.int64), scores[0][found]
