"""A tiny world: a ranker (teacher) trained as the rank tests do, recall tables, and a student
distilled from the teacher over real recall outputs, all in one bundle."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from cascade.artifacts import Bundle, BundleWriter
from cascade.feature_store import InMemoryFeatureStore
from services.prerank.distill import DistillConfig, item_vectors, train_student
from services.prerank.export import write_component
from services.prerank.model import Student, StudentConfig
from services.prerank.requests import Requests
from services.rank.export import write_component as write_rank
from services.rank.scorer import RankScorer
from services.recall.merge import ChannelBudget
from services.recall.server import RecallSettings
from services.recall.train import build_recall
from tests.services.rank.conftest import MODEL, TRAIN, tiny
from training.distill_world import World, training_requests
from training.prerank_examples import recall_merger
from training.rank_train import train

# The tiny teacher's logits spread ~0.1 within a request, so the soft term gets a larger weight
# than the shipped default to be heard over the true labels.
CONFIG = DistillConfig(
    candidates_per_request=30,
    sampled_per_request=0,
    request_fraction=0.5,
    min_train_interactions=4,
    epochs=40,
    requests_per_batch=4,
    learning_rate=1e-2,
    soft_weight=10.0,
    student=StudentConfig(dim=8, hidden=16),
)


@dataclass
class Distilled:
    world: World
    requests: Requests
    model: Student
    root: Path
    bundle: Bundle


@pytest.fixture(scope="session")
def distilled(tmp_path_factory) -> Distilled:
    torch.set_num_threads(1)
    dataset = tiny()
    teacher_model, prepared, info = train(dataset, TRAIN, MODEL)
    root = tmp_path_factory.mktemp("prerank-artifacts")
    writer = BundleWriter(root, "v1")
    sample = prepared.test[0]
    write_rank(writer, teacher_model, prepared.spec, "ml-100k", TRAIN, MODEL, info, sample)
    split = prepared.split
    build_recall(dataset, split.train_interactions, writer, prepared.spec, two_tower=False)
    writer.commit()
    bundle = Bundle.open(root, "v1")
    store = InMemoryFeatureStore(
        dataset, prepared.spec, split.train_interactions, split.train_impressions
    )
    settings = RecallSettings(two_tower=ChannelBudget(enabled=False))
    world = World(
        dataset,
        prepared.spec,
        split,
        store,
        bundle,
        RankScorer.from_bundle(bundle, store),
        recall_merger(bundle, store, settings),
    )
    requests = training_requests(world, CONFIG)
    model, info = train_student(requests, dataset, prepared.spec, replace(CONFIG, epochs=10))
    writer = BundleWriter(root, "v1")
    vectors = item_vectors(model, dataset, prepared.spec)
    known = store.known_items(torch.arange(dataset.n_items).numpy())
    write_component(writer, model, prepared.spec, dataset, vectors, known, "v1", info, requests)
    writer.commit()
    return Distilled(world, requests, model, root, Bundle.open(root, "v1"))
