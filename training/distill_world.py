"""The offline pieces distillation and the report share: one bundle's data, recall and teacher.

`open_world` loads a dataset, its temporal split, the feature store of the training period, the
bundle's teacher (RankScorer, the serving code) and its recall merge. `training_requests` and
`test_requests` place the request points (training: training/prerank_train.py; the report:
training/prerank_evaluate.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.artifacts import Bundle
from cascade.data import load_dataset
from cascade.data.schema import Dataset
from cascade.data.split import TemporalSplit, split_dataset
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import FeatureSpec
from cascade.profiles import DEFAULT
from services.prerank.distill import DistillConfig
from services.prerank.requests import Requests
from services.rank.scorer import RankScorer
from services.recall.merge import Merger
from training.prerank_examples import build_requests, recall_merger
from training.served_recall import served_recall

log = logging.getLogger(__name__)


@dataclass
class World:
    dataset: Dataset
    spec: FeatureSpec
    split: TemporalSplit
    store: InMemoryFeatureStore
    bundle: Bundle
    teacher: RankScorer
    merger: Merger


def open_world(
    dataset: Dataset | str, data_dir: Path, artifacts: Path, version: str, profile: str = DEFAULT
) -> World:
    """The bundle's teacher and recall over the dataset's training period (spec: the teacher's,
    checked against the data by RankScorer.from_bundle); recall's channel mix is the one
    `profile` serves (training/served_recall.py)."""
    bundle = Bundle.open(artifacts, version)
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, data_dir)
    spec = FeatureSpec.from_json(bundle.file("rank", "feature_spec.json").read_text())
    split = split_dataset(dataset)
    store = InMemoryFeatureStore.from_split(dataset, spec, split)
    teacher = RankScorer.from_bundle(bundle, store)
    merger = recall_merger(bundle, store, served_recall(profile).settings)
    return World(dataset, spec, split, store, bundle, teacher, merger)


def _sample(users: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit and len(users) > limit:
        return np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))
    return users


def training_requests(world: World, config: DistillConfig) -> Requests:
    """One request per training user with enough history, inside the training period."""
    train = world.split.train_interactions
    order = np.lexsort((train["ts"], train["user_id"]))
    users, times = train["user_id"][order], train["ts"][order]
    ids, start, counts = np.unique(users, return_index=True, return_counts=True)
    enough = counts >= config.min_train_interactions
    ids, start, counts = ids[enough], start[enough], counts[enough]
    ts = times[start + np.floor(config.request_fraction * counts).astype(np.int64)]
    keep = np.isin(ids, _sample(ids, config.max_users, config.seed))
    log.info("training requests: %d users", int(keep.sum()))
    return build_requests(
        world.teacher,
        world.merger,
        train,
        train,
        ids[keep],
        ts[keep],
        world.dataset.n_items,
        config.candidates_per_request,
        config.sampled_per_request,
        config.seed,
    )


def test_requests(world: World, count: int, max_users: int, seed: int = 0) -> Requests:
    """One request per test user at their cut (first test interaction), history = training."""
    test, train = world.split.test_interactions, world.split.train_interactions
    cut = np.full(world.dataset.n_users, np.iinfo(np.int64).max)
    np.minimum.at(cut, test["user_id"], test["ts"])
    users = np.intersect1d(np.unique(test["user_id"]), np.unique(train["user_id"]))
    users = _sample(users, max_users, seed)
    return build_requests(
        world.teacher, world.merger, train, test, users, cut[users], world.dataset.n_items, count
    )
