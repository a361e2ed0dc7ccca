"""Ranker examples on recall outputs at training-period requests (entire-space negatives)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cascade.artifacts import Bundle, BundleWriter
from cascade.candidates import from_proto, to_proto
from cascade.data.split import split_dataset
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import CHANNEL_POSITION, build_spec, consumed_before, history_before
from cascade.rows import online_rows
from services.rank.scorer import RankScorer
from services.rank.train import RecallExamples, TrainConfig, write_trained
from services.recall.channels import RecallContext
from services.recall.server import RecallSettings
from services.recall.train import build_recall
from tests.services.rank.conftest import MODEL, TRAIN, tiny
from training.prerank_examples import recall_candidates, recall_merger
from training.rank_examples import acted_after, request_points
from training.rank_train import prepare, train


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


@pytest.fixture(scope="module")
def channel_ranker(recall_bundle, tmp_path_factory):
    """A tiny ranker that reads recall's channel tags and positions, trained on recall's answers
    and written to its own bundle."""
    dataset, bundle = recall_bundle
    settings = RecallExamples(requests_per_user=2, candidates=20, keep=8, min_history=4)
    config = replace(TRAIN, examples="recall", recall_examples=settings)
    model_config = replace(MODEL, context_fields=("channels", CHANNEL_POSITION))
    model, prepared, info = train(dataset, config, model_config, bundle)
    root = tmp_path_factory.mktemp("channel-ranker")
    write_trained(root, "v1", model, prepared, config, model_config, info)
    store = InMemoryFeatureStore.from_split(dataset, prepared.spec, prepared.split)
    return prepared, RankScorer.from_bundle(Bundle.open(root, "v1"), store), bundle


def test_channel_features_are_the_same_offline_and_online(channel_ranker):
    """One request after the training log: the columns the ranker's examples record (training)
    and the list rank receives over the wire (serving) encode to the same channels and
    channel_position rows, and the served ranker reads the positions."""
    prepared, scorer, bundle = channel_ranker
    spec, train_log = prepared.spec, prepared.split.train_interactions
    user, ts = int(train_log["user_id"][0]), int(train_log["ts"].max()) + 1
    users, times = np.array([user]), np.array([ts])
    history = history_before(train_log, users, times, spec.history_length)
    consumed = consumed_before(train_log, users, times)
    count = 20
    masks, positions = np.zeros((1, count), np.uint32), np.zeros((1, count), np.uint32)
    recall = RecallSettings()  # the bundle has no two-tower model (and maybe no MF one)
    component = bundle.component("recall")
    recall = replace(
        recall,
        two_tower=replace(recall.two_tower, enabled="two_tower" in component),
        mf=replace(recall.mf, enabled="mf" in component),
    )
    merger = recall_merger(bundle, scorer.store, recall)
    try:
        ids, valid = recall_candidates(
            merger, users, times, history, consumed, count, masks, positions
        )
        recent = history[0][history[0] > 0]
        answer = merger.recall(
            RecallContext(user, recent, ts, True, consumed[0]), count, consumed[0]
        )
    finally:
        merger.close()
    ids, masks, positions = ids[valid], masks[valid], positions[valid]
    assert (positions > 0).all() and len(np.unique(positions)) > 1  # recall sets them
    offline = prepared.offline.rows(
        np.full(len(ids), user), ids, np.full(len(ids), ts), masks, positions
    )
    wire = from_proto(to_proto(*answer.candidates))
    np.testing.assert_array_equal(wire.item_ids, ids)
    online = online_rows(
        scorer.store,
        user,
        wire.item_ids,
        channel_masks=wire.channel_masks,
        channel_positions=wire.channel_positions,
    )
    for name in ("channels", CHANNEL_POSITION):
        np.testing.assert_array_equal(online[name], offline[name], err_msg=name)
    assert len(np.unique(online[CHANNEL_POSITION])) > 1
    read, _ = scorer.score(user, wire.item_ids, None, wire.channel_masks, wire.channel_positions)
    unknown, _ = scorer.score(user, wire.item_ids, None, wire.channel_masks)
    assert not np.allclose(read, unknown)  # the served model reads the positions


def test_a_bundle_without_channel_position_still_loads_and_serves(channel_ranker, tmp_path):
    """A ranker trained before the field (its spec has none) ignores positions on the wire."""
    prepared, _, bundle = channel_ranker
    dataset = prepared.dataset
    model, old, info = train(dataset, TRAIN, MODEL)  # the default fields: no channel_position
    assert CHANNEL_POSITION not in {f.name for f in old.spec.fields}
    write_trained(tmp_path, "old", model, old, TRAIN, MODEL, info)
    store = InMemoryFeatureStore.from_split(dataset, old.spec, old.split)
    scorer = RankScorer.from_bundle(Bundle.open(tmp_path, "old"), store)
    ids = np.arange(1, 11)
    with_positions, _ = scorer.score(
        1, ids, None, np.full(10, 2, np.uint32), np.arange(1, 11, dtype=np.uint32)
    )
    without, _ = scorer.score(1, ids)
    np.testing.assert_allclose(with_positions, without, rtol=1e-6)
