"""Ranker examples on recall outputs at training-period requests (entire-space negatives)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cascade.artifacts import Bundle, BundleWriter
from cascade.data.split import split_dataset
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from services.rank.train import RecallExamples, TrainConfig
from services.recall.train import build_recall
from tests.services.rank.conftest import tiny
from training.rank_examples import acted_after, request_points
from training.rank_train import prepare


def test_requests_are_spread_inside_each_users_history():
    train = {
        "user_id": np.array([1] * 10 + [2] * 3),
        "ts": np.r_[np.arange(100, 110), [5, 6, 7]],
        "item_id": np.arange(1, 14),
    }
    users, ts = request_points(train, RecallExamples(requests_per_user=3, min_history=4))
    assert users.tolist() == [1, 1, 1]  # user 2 has too little history
    assert ts.tolist() == [102, 105, 107]  # at 1/4, 2/4, 3/4 of the ten events


def test_labels_are_actions_at_or_after_each_request_of_the_same_user():
    log = {
        "user_id": np.array([1, 1, 1, 2]),
        "item_id": np.array([5, 6, 7, 5]),
        "ts": np.array([10, 20, 30, 15]),
        "like": np.array([True, False, True, True]),
    }
    users, ts = np.array([1, 1, 2]), np.array([15, 25, 10])
    candidates = np.array([[5, 6, 7], [5, 6, 7], [5, 6, 0]])
    liked = acted_after(log, users, ts, candidates, "like")
    assert liked.tolist() == [[False, False, True], [False, False, True], [True, False, False]]


@pytest.fixture(scope="module")
def recall_bundle(tmp_path_factory):
    dataset = tiny()
    split = split_dataset(dataset)
    root = tmp_path_factory.mktemp("rank-examples")
    writer = BundleWriter(root, "v1")
    build_recall(dataset, split.train_interactions, writer, build_spec(dataset), two_tower=False)
    return dataset, Bundle.open(root, "v1")


def test_recall_examples_hold_recall_candidates_labelled_by_what_followed(recall_bundle):
    dataset, bundle = recall_bundle
    settings = RecallExamples(requests_per_user=2, candidates=20, keep=8, min_history=4)
    config = TrainConfig(examples="recall", recall_examples=settings)
    prepared = prepare(dataset, config, bundle=bundle)
    examples = {
        k: np.concatenate([prepared.train[1][k], prepared.validation[1][k]])
        for k in prepared.train[1]
    }
    train = split_dataset(dataset).train_interactions
    assert len(examples["ts"]) > 0 and examples["play"].any() and not examples["play"].all()
    for user, item, t, play in zip(
        examples["user_id"], examples["item_id"], examples["ts"], examples["play"], strict=True
    ):
        mine = train["user_id"] == user
        before = mine & (train["ts"] < t)
        assert item not in train["item_id"][before]  # consumed items are never candidates
        later = mine & (train["ts"] >= t) & train["play"]
        assert bool(play) == (item in train["item_id"][later])
    per_request = np.unique(examples["user_id"] * 10**10 + examples["ts"], return_counts=True)[1]
    assert per_request.max() <= 8
    both = prepare(dataset, replace(config, examples="both"), bundle=bundle)
    n_both = len(both.train[1]["ts"]) + len(both.validation[1]["ts"])
    n_logged = len(split_dataset(dataset).train_impressions["ts"])
    assert n_both == n_logged + len(examples["ts"])


def test_recall_examples_need_a_bundle():
    with pytest.raises(ValueError, match="needs a bundle"):
        prepare(tiny(), TrainConfig(examples="recall"))
    with pytest.raises(ValueError, match="examples must be one of"):
        TrainConfig(examples="clicks")


def test_recall_examples_ask_the_recall_the_profile_serves(recall_bundle, tmp_path):
    from cascade.candidates import channel_bit
    from training.rank_examples import recall_examples

    dataset, bundle = recall_bundle
    profile = tmp_path / "popular-only.toml"
    off = "\n".join(
        f"{name} = {{ enabled = false }}"
        for name in ("mf", "two_tower", "item_cf", "profile", "social", "fresh")
    )
    profile.write_text(
        '[profile]\nname = "popular-only"\n\n[gateway]\nrecall_count = 15\n\n'
        f"[recall]\npopular = {{ quota = 1.0 }}\n{off}\n"
    )
    split = split_dataset(dataset)
    spec = build_spec(dataset)
    store = InMemoryFeatureStore.from_split(dataset, spec, split)
    settings = RecallExamples(requests_per_user=2, keep=100, min_history=4, profile=str(profile))
    found = recall_examples(bundle, store, spec, split.train_interactions, ("play",), settings)
    # The profile's count (candidates=0) and its one channel: every example is popular's alone.
    per_request = np.unique(found["user_id"] * 10**10 + found["ts"], return_counts=True)[1]
    assert per_request.max() == 15
    assert (found["channel_mask"] == channel_bit("popular")).all()
