"""Hand-made recall worlds whose right answers can be read off the interactions."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.data.schema import Dataset
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from tests.conftest import make_tiny_dataset

DAY = 86_400


def make_recall_world() -> Dataset:
    """12 items, 6 users. Items 1-3 by creator 1 (category 1), 4-6 by creator 2 (category 2),
    7-12 by creator 3 (category 3). Users 1-3 each play 1 then 2 a minute apart; user 4 plays 1,
    then 3 ten days later; user 5 plays 7, 8, 9 (and likes 9); user 6 follows user 5."""
    dataset = make_tiny_dataset()
    items = dataset.items
    items["creator_id"] = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3], dtype=np.int64)
    items["categories"][:] = 0
    items["categories"][:, 0] = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3])
    items["upload_ts"] = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 50], dtype=np.int64) * DAY
    rows = [  # (user, item, ts in minutes, like)
        (1, 1, 0, 0),
        (1, 2, 1, 0),
        (2, 1, 10, 0),
        (2, 2, 11, 0),
        (3, 1, 20, 0),
        (3, 2, 21, 0),
        (4, 1, 30, 0),
        (4, 3, 30 + 10 * 24 * 60, 0),
        (5, 7, 100, 0),
        (5, 8, 101, 0),
        (5, 9, 102, 1),
    ]
    user, item, minute, like = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    n = len(rows)
    dataset.interactions = {
        "user_id": user,
        "item_id": item,
        "ts": 30 * DAY + minute * 60,
        "play": np.ones(n, bool),
        "complete": np.zeros(n, bool),
        "like": like.astype(bool),
        "share": np.zeros(n, bool),
        "rating": np.full(n, np.nan, np.float32),
    }
    dataset.impressions = {k: v[:0] for k, v in dataset.impressions.items()}
    dataset.follows = {
        "follower_id": np.array([6], np.int64),
        "followee_id": np.array([5], np.int64),
        "ts": np.array([0], np.int64),
    }
    dataset.creators["user_id"] = np.array([0, 0, 0], dtype=np.int64)
    dataset.meta = {**dataset.meta, "name": "recall-world"}
    dataset.validate()
    return dataset


@pytest.fixture
def world() -> Dataset:
    return make_recall_world()


@pytest.fixture
def world_store(world) -> InMemoryFeatureStore:
    return InMemoryFeatureStore(world, build_spec(world), world.interactions)
