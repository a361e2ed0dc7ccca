"""A tiny ranker trained once per session, exported into a bundle, with its feature store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cascade.artifacts import Bundle, BundleWriter
from cascade.data.schema import Dataset
from cascade.feature_store import InMemoryFeatureStore
from services.rank.export import write_component
from services.rank.model import ModelConfig, RankModel
from services.rank.train import Prepared, TrainConfig
from tests.conftest import make_tiny_dataset
from training.rank_train import train

TRAIN = TrainConfig(seed=0, batch_size=32, max_epochs=3)
MODEL = ModelConfig(common_width=8, expert_hidden=16, expert_width=8, tower_hidden=8)


@dataclass
class Trained:
    dataset: Dataset
    prepared: Prepared
    model: RankModel
    root: Path
    bundle: Bundle
    store: InMemoryFeatureStore


def tiny() -> Dataset:
    return make_tiny_dataset(seed=3, n_users=12, n_items=30, n_events=400)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    torch.set_num_threads(1)
    dataset = tiny()
    model, prepared, info = train(dataset, TRAIN, MODEL)
    root = tmp_path_factory.mktemp("artifacts")
    writer = BundleWriter(root, "v1")
    write_component(writer, model, prepared.spec, "ml-100k", TRAIN, MODEL, info, prepared.test[0])
    writer.commit()
    data = prepared.split
    store = InMemoryFeatureStore(
        dataset, prepared.spec, data.train_interactions, data.train_impressions
    )
    return Trained(dataset, prepared, model, root, Bundle.open(root, "v1"), store)
