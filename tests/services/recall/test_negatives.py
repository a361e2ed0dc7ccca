"""The two-tower's negatives from the entire item space: a seeded uniform sampler over the whole
catalogue, used by training, and the `cascade train recall` options that record the choice."""

from __future__ import annotations

import numpy as np
import torch

from cascade.artifacts import Bundle
from cascade.data.schema import save
from cascade.features import build_spec
from services.recall import two_tower
from services.recall.train import main as train_recall
from services.recall.two_tower import TwoTowerConfig, catalogue_negatives, train_two_tower
from tests.conftest import make_tiny_dataset


def test_the_sampler_draws_the_whole_catalogue_uniformly_and_is_seeded():
    n_items = 51  # ids 1..50; 0 is "no item"
    draws = catalogue_negatives(np.random.default_rng(7), n_items, 50_000)
    again = catalogue_negatives(np.random.default_rng(7), n_items, 50_000)
    np.testing.assert_array_equal(draws, again)
    assert draws.min() == 1 and draws.max() == n_items - 1
    counts = np.bincount(draws, minlength=n_items)[1:]
    assert np.all(counts > 0)  # every item, played or not, can be a negative
    expected = len(draws) / (n_items - 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 90.0  # 49 degrees of freedom: p < 0.001 beyond ~86
    other = catalogue_negatives(np.random.default_rng(8), n_items, 50_000)
    assert not np.array_equal(draws, other)


def test_training_adds_the_sampled_negatives_to_each_batch(monkeypatch):
    torch.set_num_threads(1)
    dataset = make_tiny_dataset(seed=1, n_users=20, n_items=30, n_events=200)
    calls = []

    def recording(rng, n_items, count):
        calls.append((n_items, count))
        return catalogue_negatives(rng, n_items, count)

    monkeypatch.setattr(two_tower, "catalogue_negatives", recording)
    config = TwoTowerConfig(dim=8, hidden=16, batch_size=32, epochs=1, mixed_negatives=12)
    model = train_two_tower(
        dataset, dataset.interactions, build_spec(dataset), config, progress=False
    )
    batches = len(dataset.interactions["item_id"]) // 32
    assert calls == [(dataset.n_items, 12)] * batches
    assert model.metrics["config"]["mixed_negatives"] == 12


def test_cascade_train_recall_records_the_negative_options_in_the_manifest(tmp_path):
    dataset = make_tiny_dataset(seed=1, n_users=20, n_items=30, n_events=200)
    save(dataset, tmp_path / "data" / "ml-100k")
    common = ["--data-dir", str(tmp_path / "data"), "--artifacts", str(tmp_path / "artifacts")]
    train_recall(
        [*common, "--version", "v1", "--two-tower-mixed-negatives", "64", "--no-two-tower-logq"]
    )
    config = Bundle.open(tmp_path / "artifacts", "v1").component("recall")["two_tower"]
    config = config["training"]["config"]
    assert config["mixed_negatives"] == 64 and config["logq_correction"] is False
    train_recall([*common, "--version", "v2"])  # the defaults: in-batch only, logQ on
    config = Bundle.open(tmp_path / "artifacts", "v2").component("recall")["two_tower"]
    config = config["training"]["config"]
    assert config["mixed_negatives"] == 0 and config["logq_correction"] is True
