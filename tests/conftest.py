"""Shared fixtures: a tiny, hand-readable dataset in the common schema; the real MovieLens files
downloaded once per session for tests marked `network` (skipped unless asked for)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cascade.data.schema import MAX_CATEGORIES, Dataset


def make_tiny_dataset(
    seed: int = 0, n_users: int = 6, n_items: int = 12, n_events: int = 60
) -> Dataset:
    """Random but seeded: users 1..n_users, items 1..n_items, interactions at distinct times."""
    rng = np.random.default_rng(seed)
    categories = np.zeros((n_items, MAX_CATEGORIES), dtype=np.int16)
    categories[:, 0] = rng.integers(1, 4, n_items)
    categories[:, 1] = rng.integers(0, 4, n_items)
    users = {
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "age": rng.choice(np.array([-1, 17, 30, 60], dtype=np.int16), n_users),
        "gender": rng.integers(0, 3, n_users).astype(np.int8),
        "occupation": rng.integers(0, 3, n_users).astype(np.int16),
        "region": rng.integers(0, 5, n_users).astype(np.int32),
    }
    items = {
        "item_id": np.arange(1, n_items + 1, dtype=np.int64),
        "creator_id": rng.integers(0, 4, n_items).astype(np.int64),
        "categories": categories,
        "upload_ts": np.sort(rng.integers(0, 50, n_items)).astype(np.int64),
        "title": np.array([f"item {i}" for i in range(1, n_items + 1)], dtype=object),
    }
    creators = {
        "creator_id": np.arange(1, 4, dtype=np.int64),
        "user_id": np.array([1, 0, 2], dtype=np.int64),
        "name": np.array(["a", "b", "c"], dtype=object),
    }
    follows = {
        "follower_id": np.array([3, 4], dtype=np.int64),
        "followee_id": np.array([1, 2], dtype=np.int64),
        "ts": np.array([1, 2], dtype=np.int64),
    }
    ts = rng.permutation(np.arange(100, 100 + n_events)).astype(np.int64)
    like = rng.random(n_events) < 0.4
    interactions = {
        "user_id": rng.integers(1, n_users + 1, n_events).astype(np.int64),
        "item_id": rng.integers(1, n_items + 1, n_events).astype(np.int64),
        "ts": ts,
        "play": np.ones(n_events, dtype=bool),
        "complete": like | (rng.random(n_events) < 0.3),
        "like": like,
        "share": np.zeros(n_events, dtype=bool),
        "rating": np.full(n_events, np.nan, dtype=np.float32),
    }
    impressions = {
        "user_id": interactions["user_id"],
        "item_id": interactions["item_id"],
        "ts": ts,
        "position": np.zeros(n_events, dtype=np.int16),
        "click": np.ones(n_events, dtype=bool),
        "play": np.ones(n_events, dtype=bool),
        "complete": interactions["complete"],
        "like": like,
        "share": np.zeros(n_events, dtype=bool),
    }
    meta = {
        "name": "tiny",
        "categories": ["none", "rock", "jazz", "folk"],
        "occupations": ["unknown", "artist", "engineer"],
        "tasks": ["play", "like"],
        "description": "hand-made test data",
    }
    return Dataset(users, items, creators, follows, interactions, impressions, meta)


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_tiny_dataset()


NETWORK_ENV = "CASCADE_TEST_NETWORK"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `network` reach the package index: they run only with -m network or with
    CASCADE_TEST_NETWORK=1, so the default suite never depends on the network."""
    asked = os.environ.get(NETWORK_ENV) == "1" or "network" in (config.option.markexpr or "")
    if asked:
        return
    skip = pytest.mark.skip(
        reason=f"needs the package index: run with -m network or {NETWORK_ENV}=1"
    )
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ml100k_raw(tmp_path_factory) -> Callable[[Path], Path]:
    """Downloads the recbole wheel's MovieLens files once per session; the returned function
    puts a copy where `prepare("ml-100k", data_dir)` looks first, and returns data_dir."""
    from cascade.data import ml100k

    cache = tmp_path_factory.mktemp("ml100k-raw")
    ml100k.fetch_raw(cache)

    def into(data_dir: Path) -> Path:
        raw = Path(data_dir) / "raw" / "ml-100k"
        raw.mkdir(parents=True, exist_ok=True)
        for name in ml100k.RAW_FILES:
            shutil.copyfile(cache / name, raw / name)
        return Path(data_dir)

    return into


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One tiny bundle per session, every stage trained (tests/gateway/conftest.py): the gateway
    tests' stack and the deploy tests' (compose settings, Prometheus) share it."""
    from tests.gateway.conftest import build_bundle, tiny_world

    return build_bundle(tmp_path_factory.mktemp("gateway"), tiny_world())


# A real redis-server per test that asks for it (tests/redis_server.py).
from tests.redis_server import (  # noqa: E402, F401
    redis_binary,
    redis_cluster,
    redis_cluster_url,
    redis_process,
    redis_url,
)
