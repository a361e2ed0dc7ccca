"""What the gateway knows of the items and users (validation, the fallbacks' popular cache, creator
cap and seen filter), loaded from the served bundle's dataset and swapped on a hot reload."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.artifacts import ArtifactError, Bundle
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.features import build_spec, content_width
from gateway.ids import GatewayIds
from gateway.settings import GatewaySettings


class UserItems:
    """Each user's items from an interaction log as CSR (sorted per user): the fallbacks filter
    them, so a degraded answer never serves what the user already consumed."""

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray, n_users: int):
        order = np.lexsort((item_ids, user_ids))
        self.items = np.asarray(item_ids, dtype=np.int64)[order]
        self.ptr = np.searchsorted(np.asarray(user_ids)[order], np.arange(n_users + 2))

    def of(self, user_id: int) -> np.ndarray:
        if not 0 < user_id < len(self.ptr) - 1:
            return np.empty(0, dtype=np.int64)
        return self.items[self.ptr[user_id] : self.ptr[user_id + 1]]


@dataclass
class Catalog:
    """What the gateway knows of the items: which exist, their creators, the popular ones."""

    known: np.ndarray  # (n_items + 1,) bool by item id
    creators: np.ndarray  # (n_items + 1,) int64 creator id by item id
    popular: np.ndarray  # item ids, most popular first
    history_length: int
    version: str = ""  # the bundle's (cascade_model_info)
    dataset: str = ""
    ids: GatewayIds | None = None  # external user and item ids <-> dense ids (gateway/ids.py)
    as_of_s: int = 0  # the training log's last time (the "data" clock starts there)
    history: UserItems | None = None  # what each user consumed in the training log
    n_categories: int = 0  # category ids are 1..n_categories-1 (uploads are checked against it)
    # (n_items + 1,) upload time (s) by item id, 0 = unknown (the traffic pool's young uploads).
    uploaded: np.ndarray | None = None
    content_dim: int = 0  # an upload's content vector has this many floats (0: the data has none)

    def consumed(self, user_id: int) -> np.ndarray:
        """The user's logged items (empty for unknown users or without a history)."""
        if self.history is None:
            return np.empty(0, dtype=np.int64)
        return self.history.of(user_id)

    def known_items(self, item_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids, dtype=np.int64)
        known = self.known
        inside = (ids > 0) & (ids < len(known))
        return inside & known[np.where(inside, ids, 0)]

    def add(
        self, item_ids: np.ndarray, creator_ids: np.ndarray, upload_s: np.ndarray | None = None
    ) -> None:
        """Uploaded items (AddItems): the arrays are replaced whole, grown to the largest id."""
        if not len(item_ids):
            return
        n = max(len(self.known), int(np.max(item_ids)) + 1)
        known, creators = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
        uploaded = np.zeros(n, dtype=np.int64)
        known[: len(self.known)], creators[: len(self.creators)] = self.known, self.creators
        if self.uploaded is not None:
            uploaded[: len(self.uploaded)] = self.uploaded
        known[item_ids], creators[item_ids] = True, creator_ids
        if upload_s is not None:
            uploaded[item_ids] = upload_s
        self.creators, self.known, self.uploaded = creators, known, uploaded


def load_catalog(settings: GatewaySettings) -> Catalog:
    """The bundle's dataset and the popular cache (recall's trending table, or play counts of the
    training period when the bundle has none)."""
    bundle = Bundle.open(settings.artifacts, settings.bundle)
    dataset = load_dataset(bundle.component("recall")["dataset"], settings.data_dir)
    items = dataset.items
    known = np.zeros(dataset.n_items + 1, dtype=bool)
    known[items["item_id"]] = True
    creators = np.zeros(dataset.n_items + 1, dtype=np.int64)
    creators[items["item_id"]] = items["creator_id"]
    uploaded = np.zeros(dataset.n_items + 1, dtype=np.int64)
    uploaded[items["item_id"]] = items["upload_ts"]
    train = split_dataset(dataset).train_interactions
    as_of = int(train["ts"].max()) if len(train["ts"]) else 0
    try:
        cache = bundle.load_npz("recall", "popular.npz")
        popular = cache["item_ids"]
        as_of = int(cache["as_of"]) if "as_of" in cache else as_of
    except (ArtifactError, KeyError):
        plays = train["item_id"]
        counts = np.bincount(plays, minlength=len(known))
        popular = np.flatnonzero(counts)[np.argsort(-counts[counts > 0], kind="stable")]
    popular = np.asarray(popular, dtype=np.int64)[: settings.recall_count]
    ids = GatewayIds.for_dataset(
        settings.data_dir,
        dataset.name,
        len(dataset.users["user_id"]),
        len(items["item_id"]),
        settings.new_user_capacity,
        settings.new_item_capacity,
    )
    history = UserItems(train["user_id"], train["item_id"], dataset.n_users)
    spec = build_spec(dataset)
    return Catalog(
        known,
        creators,
        popular,
        spec.history_length,
        bundle.version,
        dataset.name,
        ids,
        as_of,
        history,
        len(dataset.meta["categories"]),
        uploaded,
        content_width(spec),
    )
