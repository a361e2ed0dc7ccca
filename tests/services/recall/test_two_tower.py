"""Two-tower training, logQ correction, ONNX export and the serving channel on tiny data."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cascade.artifacts import ArtifactError, Bundle, BundleWriter
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from services.recall.channels import RecallContext
from services.recall.channels.two_tower import TwoTowerChannel
from services.recall.export import COMPONENT, ITEM_INDEX, export_two_tower
from services.recall.index import IndexSettings
from services.recall.model import corrected_logits
from services.recall.two_tower import (
    Batcher,
    TwoTowerConfig,
    make_examples,
    sampling_log_q,
    train_two_tower,
    user_vectors,
)
from tests.conftest import make_tiny_dataset

N_USERS, N_ITEMS = 40, 30
CONFIG = TwoTowerConfig(dim=16, hidden=32, batch_size=32, epochs=30, temperature=0.1)


def two_group_dataset():
    """Users 1..20 play items 1..15, users 21..40 play items 16..30: co-consumption is known."""
    dataset = make_tiny_dataset(seed=1, n_users=N_USERS, n_items=N_ITEMS, n_events=800)
    rng = np.random.default_rng(1)
    users = dataset.interactions["user_id"]
    low = users <= N_USERS // 2
    dataset.interactions["item_id"] = np.where(
        low, rng.integers(1, 16, len(users)), rng.integers(16, 31, len(users))
    ).astype(np.int64)
    return dataset


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    dataset = two_group_dataset()
    spec = build_spec(dataset)
    model = train_two_tower(dataset, dataset.interactions, spec, CONFIG, progress=False)
    return dataset, spec, model


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    dataset, spec, model = trained
    writer = BundleWriter(tmp_path_factory.mktemp("artifacts"), "v1")
    info = export_two_tower(model, spec, writer, IndexSettings())
    writer.set_component(COMPONENT, info)
    writer.commit()
    return Bundle(writer.folder)


def test_training_lowers_the_loss_and_is_seeded(trained):
    dataset, spec, model = trained
    losses = model.metrics["train_loss_per_epoch"]
    assert losses[-1] < 0.8 * losses[0]
    short = TwoTowerConfig(**{**CONFIG.__dict__, "epochs": 2})
    first = train_two_tower(dataset, dataset.interactions, spec, short, progress=False)
    again = train_two_tower(dataset, dataset.interactions, spec, short, progress=False)
    assert first.metrics["train_loss_per_epoch"] == again.metrics["train_loss_per_epoch"]
    np.testing.assert_array_equal(first.item_vectors, again.item_vectors)


def test_co_consumed_items_score_above_the_other_group(trained):
    dataset, spec, model = trained
    batcher = Batcher(dataset, spec)
    users = np.arange(1, N_USERS + 1)
    histories = InMemoryFeatureStore(dataset, spec, dataset.interactions).history(users)
    scores = user_vectors(model, batcher, users, histories) @ model.item_vectors.T
    own = np.where((users <= 20)[:, None], scores[:, 1:16], scores[:, 16:31]).mean(axis=1)
    other = np.where((users <= 20)[:, None], scores[:, 16:31], scores[:, 1:16]).mean(axis=1)
    assert np.all(own > other)


def test_logq_correction_subtracts_log_q_from_every_logit():
    rng = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(4, 8, generator=rng), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(6, 8, generator=rng), dim=-1)
    log_q = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]))
    plain = corrected_logits(users, items, None, 0.1)
    torch.testing.assert_close(plain, users @ items.T / 0.1)
    torch.testing.assert_close(
        corrected_logits(users, items, log_q, 0.1) - plain, -log_q.expand(4, 6)
    )


def test_sampling_log_q_is_the_expected_count_among_negatives():
    item_ids = np.array([1, 1, 1, 2])  # item 1 is three times as frequent as item 2
    in_batch = sampling_log_q(item_ids, n_items=4, batch_size=8, mixed_negatives=0)
    assert in_batch[1] - in_batch[2] == pytest.approx(np.log(3.0))
    mixed = np.exp(sampling_log_q(item_ids, n_items=4, batch_size=8, mixed_negatives=6))
    np.testing.assert_allclose(mixed[1:], [8 * 0.75 + 2, 8 * 0.25 + 2, 2], rtol=1e-5)


def test_onnx_user_tower_matches_torch(trained, bundle):
    dataset, spec, model = trained
    session = ort.InferenceSession(str(bundle.file(COMPONENT, "user_tower.onnx")))
    names = [node.name for node in session.get_inputs()]
    rng = np.random.default_rng(0)
    random = {f.name: rng.integers(0, f.vocab_size, 17) for f in spec.of("user")}
    random["history"] = rng.integers(0, N_ITEMS + 1, (17, spec.history_length))
    examples = make_examples(dataset.interactions, spec.history_length)
    batcher = Batcher(dataset, spec)
    real = {
        k: v.numpy() for k, v in batcher.user_inputs(examples.user_ids, examples.histories).items()
    }
    for feeds in (random, real):
        with torch.no_grad():
            expected = model.user_vector(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        got = session.run(None, {name: feeds[name].astype(np.int64) for name in names})[0]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_channel_answers_a_known_user_with_the_exact_top_k(trained, bundle):
    dataset, spec, model = trained
    store = InMemoryFeatureStore(dataset, spec, dataset.interactions)
    channel = TwoTowerChannel.from_bundle(bundle, store)
    recent = store.history(np.array([3]))[0]
    recent = recent[recent > 0]
    ids, scores = channel.retrieve(RecallContext(3, recent, 10_000, True), 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and len(ids) == 10
    assert np.all(np.diff(scores) <= 1e-6)
    vector = channel.user_vector(3, recent)
    expected = np.argsort(-(vector @ model.item_vectors[1:].T)[0])[:10] + 1
    np.testing.assert_array_equal(ids, expected)
    assert np.isin(ids[:5], np.arange(1, 16)).all()  # user 3 is in the group of items 1..15


def test_channel_answers_without_history_and_is_empty_for_anonymous(trained, bundle):
    dataset, spec, _ = trained
    store = InMemoryFeatureStore(dataset, spec, dataset.interactions)
    channel = TwoTowerChannel.from_bundle(bundle, store)
    no_history = np.empty(0, dtype=np.int64)
    ids, _ = channel.retrieve(RecallContext(5, no_history, 10_000, True), 7)
    assert len(ids) == 7 and len(np.unique(ids)) == 7
    ids, _ = channel.retrieve(RecallContext(0, no_history, 10_000, False), 7)
    assert len(ids) == 0
    ids, _ = channel.retrieve(RecallContext(0, np.array([16, 17]), 10_000, False), 5)
    assert np.isin(ids[:3], np.arange(16, 31)).all()  # a session alone is enough


def test_channel_refuses_a_mismatched_spec_or_missing_index(trained, bundle, tmp_path):
    dataset, spec, _ = trained
    other_spec = build_spec(dataset, widths={"item_id": 8})
    store = InMemoryFeatureStore(dataset, other_spec, dataset.interactions)
    with pytest.raises(ValueError, match="two_tower.json.*item_id"):
        TwoTowerChannel.from_bundle(bundle, store)
    broken = tmp_path / "v1"
    shutil.copytree(bundle.folder, broken)
    (broken / COMPONENT / ITEM_INDEX).unlink()
    good_store = InMemoryFeatureStore(dataset, spec, dataset.interactions)
    with pytest.raises(ArtifactError, match=ITEM_INDEX):
        TwoTowerChannel.from_bundle(Bundle(broken), good_store)


def test_channel_serves_from_an_hnsw_index_above_the_threshold(trained, tmp_path):
    dataset, spec, model = trained
    writer = BundleWriter(tmp_path, "v2")
    info = export_two_tower(model, spec, writer, IndexSettings(exact_threshold=10))
    assert info["two_tower"]["index_kind"] == "hnsw"
    writer.commit()
    store = InMemoryFeatureStore(dataset, spec, dataset.interactions)
    channel = TwoTowerChannel.from_bundle(Bundle(writer.folder), store)
    recent = np.array([2, 3, 4])
    ids, _ = channel.retrieve(RecallContext(1, recent, 10_000, True), 10)
    vector = channel.user_vector(1, recent)
    exact = np.argsort(-(vector @ model.item_vectors[1:].T)[0])[:10] + 1
    assert len(np.intersect1d(ids, exact)) >= 9  # tiny graph, efSearch >= k: near exact


def with_group_content(dataset):
    """Items 1..15 sound alike, items 16..30 alike: content says the group, creators do not."""
    rng = np.random.default_rng(2)
    group = (dataset.items["item_id"] > N_ITEMS // 2).astype(int)
    content = np.eye(2, 4, dtype=np.float32)[group] + rng.normal(0, 0.1, (N_ITEMS, 4))
    dataset.items["content"] = content.astype(np.float32)
    return dataset


@pytest.fixture(scope="module")
def content_bundle(tmp_path_factory):
    torch.set_num_threads(1)
    dataset = with_group_content(two_group_dataset())
    spec = build_spec(dataset)
    assert spec.field("content").kind == "dense"
    model = train_two_tower(dataset, dataset.interactions, spec, CONFIG, progress=False)
    writer = BundleWriter(tmp_path_factory.mktemp("content-artifacts"), "v1")
    writer.set_component(COMPONENT, export_two_tower(model, spec, writer, IndexSettings()))
    writer.commit()
    return dataset, spec, model, Bundle(writer.folder)


def test_an_upload_is_recalled_by_its_content_without_retraining(content_bundle):
    dataset, spec, model, bundle = content_bundle
    store = InMemoryFeatureStore(dataset, spec, dataset.interactions)
    channel = TwoTowerChannel.from_bundle(bundle, store)
    # Two uploads by the same creator in the same category, one sounding like each group.
    content = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    store.add_items(
        np.array([31, 32]),
        np.array([1, 1]),
        np.zeros((2, 6), np.int16),
        np.array([99, 99]),
        content,
    )
    recent = store.history(np.array([3]))[0]  # user 3 plays items 1..15
    recent = recent[recent > 0]
    ids, scores = channel.retrieve(RecallContext(3, recent, 10_000, True), N_ITEMS + 2)
    assert {31, 32} <= set(ids.tolist())  # the index add path gave both a vector
    score = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    assert score[31] > score[32] + 0.1  # the upload that sounds like what user 3 plays ranks first
    # Its vector is the item tower's on its content, not the unknown (padding) item's.
    upload_ids, vectors = channel.uploads
    unknown = channel.item_vectors(np.array([0]))[0]
    assert not np.allclose(vectors[list(upload_ids).index(31)], unknown, atol=1e-3)


def test_items_without_plays_are_scored_without_their_untrained_id(content_bundle):
    dataset, spec, model, _ = content_bundle
    played = np.unique(dataset.interactions["item_id"])
    assert model.cold_items[played].sum() == 0 and model.cold_items[0]
    assert CONFIG.id_dropout > 0  # the default trains items without their id
