"""The MF channel: EASE's or PureSVD's item vectors in FAISS, the whole history folded in."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.artifacts import ArtifactError, Bundle, BundleWriter
from cascade.baselines import EASE
from cascade.data.split import split_dataset
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from services.recall.channels import RecallContext
from services.recall.channels.mf import ITEM_INDEX, MFChannel
from services.recall.mf import MFSettings, build_mf, fit_pure_svd
from services.recall.train import build_recall
from tests.conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def world():
    dataset = make_tiny_dataset(seed=5, n_users=40, n_items=50, n_events=600)
    train = split_dataset(dataset).train_interactions
    store = InMemoryFeatureStore(dataset, build_spec(dataset), train)
    return dataset, train, store


def channel_for(tmp_path, world, settings: MFSettings) -> MFChannel:
    dataset, train, store = world
    writer = BundleWriter(tmp_path, "v1")
    info = build_mf(train, dataset.n_users, dataset.n_items, writer, settings)
    writer.set_component("recall", info)
    writer.commit()
    return MFChannel.from_bundle(Bundle.open(tmp_path, "v1"), store)


def context(user: int, recent=()) -> RecallContext:
    return RecallContext(user, np.asarray(recent, dtype=np.int64), 0, True)


def test_ease_kind_returns_eases_own_ranking(tmp_path, world):
    dataset, train, store = world
    channel = channel_for(tmp_path, world, MFSettings(ease_l2=50.0))
    ease = EASE(l2=50.0).fit(train, dataset.n_users, dataset.n_items)
    for user in range(1, 11):
        ids, scores = channel.retrieve(context(user), 20)
        expected = ease.score(np.array([user]))[0]
        np.testing.assert_allclose(scores, expected[ids], rtol=1e-4, atol=1e-5)
        consumed = store.consumed(user)
        # Ordered by EASE's score; consumed items are the merge's to drop, so compare the rest.
        order = np.argsort(-expected[1:], kind="stable") + 1
        best = [i for i in order if i not in consumed][:5]
        assert set(best) <= set(ids[~np.isin(ids, consumed)][:8].tolist())
        assert np.all(np.diff(scores) <= 1e-6)


def test_recent_items_fold_in_at_once_and_unknown_users_get_nothing(tmp_path, world):
    channel = channel_for(tmp_path, world, MFSettings(ease_l2=50.0))
    before, _ = channel.retrieve(context(3), 10)
    after, _ = channel.retrieve(context(3, recent=[49, 50]), 10)
    assert before.tolist() != after.tolist()  # a play seconds ago changes the query
    assert len(channel.retrieve(context(0), 10)[0]) == 0  # anonymous, no recent items
    assert len(channel.retrieve(context(10_000), 10)[0]) == 0  # unknown user, no history
    assert len(channel.retrieve(context(0, recent=[7]), 10)[0]) > 0  # anonymous with a play


def test_pure_svd_kind_for_large_catalogs_scores_x_v_vt(tmp_path, world):
    dataset, train, store = world
    settings = MFSettings(ease_max_items=0, svd_dim=8)
    channel = channel_for(tmp_path, world, settings)
    vectors = fit_pure_svd(train, dataset.n_users, dataset.n_items, 8, 4, 0)
    np.testing.assert_allclose(vectors[1:].T @ vectors[1:], np.eye(8), atol=1e-4)
    user = 4
    history = store.consumed(user)
    expected = vectors[history].sum(axis=0) @ vectors.T
    ids, scores = channel.retrieve(context(user), 15)
    np.testing.assert_allclose(scores, expected[ids], rtol=1e-4, atol=1e-5)
    assert ids.tolist() == (np.argsort(-expected[1:], kind="stable") + 1)[:15].tolist()


def test_pure_svd_recovers_a_low_rank_matrix_exactly():
    # Users 1..6 in two blocks: items 1-3 and items 4-6. Rank 2: the top-2 factors span it.
    users = np.repeat(np.arange(1, 7), 3)
    items = np.concatenate([[1, 2, 3]] * 3 + [[4, 5, 6]] * 3)
    vectors = fit_pure_svd({"user_id": users, "item_id": items}, 7, 7, 2, 4, 0)
    projection = vectors @ vectors.T
    np.testing.assert_allclose(projection[1:4, 1:4], np.full((3, 3), 1 / 3), atol=1e-5)
    np.testing.assert_allclose(projection[1:4, 4:7], 0.0, atol=1e-5)


def test_a_bundle_without_the_model_or_with_a_wrong_index_is_refused(tmp_path, world):
    dataset, train, store = world
    writer = BundleWriter(tmp_path, "bare")
    build_recall(dataset, train, writer, two_tower=False, mf=False, progress=False)
    with pytest.raises(ArtifactError, match="no MF model"):
        MFChannel.from_bundle(Bundle.open(tmp_path, "bare"), store)
    writer = BundleWriter(tmp_path, "odd")
    info = build_mf(train, dataset.n_users, dataset.n_items, writer, MFSettings())
    info["mf"]["n_items"] += 1  # the index no longer covers the recorded catalog
    writer.set_component("recall", info)
    writer.commit()
    with pytest.raises(ArtifactError, match=ITEM_INDEX):
        MFChannel.from_bundle(Bundle.open(tmp_path, "odd"), store)


def test_a_request_in_the_past_folds_in_only_what_was_consumed_before_it(tmp_path, world):
    channel = channel_for(tmp_path, world, MFSettings(ease_l2=50.0))
    _, _, store = world
    everything = store.consumed(6)
    earlier = everything[: len(everything) // 2]
    past = RecallContext(6, np.empty(0, np.int64), 0, True, consumed=earlier)
    np.testing.assert_array_equal(
        channel.query(6, np.empty(0, np.int64), earlier)[0] > 0,
        np.isin(np.arange(channel.index.d), earlier),
    )
    assert channel.retrieve(past, 10)[0].tolist() != channel.retrieve(context(6), 10)[0].tolist()
