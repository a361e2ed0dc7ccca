"""The ONNX scorer: same numbers as the trained model, fusion, bulk labelling, spec checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from cascade.rows import OfflineRows, input_names, online_rows
from services.rank.scorer import RankScorer, ScorerSettings, SpecMismatch
from tests.conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def scorer(trained):
    return RankScorer.from_bundle(trained.bundle, trained.store)


def test_score_matches_the_torch_model_and_fuses_with_configured_weights(trained, scorer):
    items = np.arange(1, 31)
    assert scorer.one_user_row  # serving sends the user once; torch below gets it per row
    fused, probabilities = scorer.score(4, items)
    rows = online_rows(trained.store, 4, items)
    with torch.no_grad():
        expected = trained.model(
            *(torch.from_numpy(rows[n]) for n in input_names(trained.store.spec))
        )
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-4)
    assert scorer.tasks == ("play", "like")
    np.testing.assert_allclose(
        fused, probabilities[:, 0] * 1.0 + probabilities[:, 1] * 2.0, rtol=1e-6
    )


def test_fusion_weights_from_settings_override_the_artifact(trained):
    only_like = RankScorer.from_bundle(
        trained.bundle, trained.store, ScorerSettings(fusion_weights=(0.0, 1.0))
    )
    fused, probabilities = only_like.score(2, np.array([1, 2, 3]))
    np.testing.assert_allclose(fused, probabilities[:, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="fusion_weights has 3 values"):
        RankScorer.from_bundle(
            trained.bundle, trained.store, ScorerSettings(fusion_weights=(1, 1, 1))
        )


def test_empty_candidates_give_empty_scores(scorer):
    fused, probabilities = scorer.score(1, np.array([], dtype=np.int64))
    assert fused.shape == (0,) and probabilities.shape == (0, 2)


def test_bulk_labels_equal_the_offline_rows_scored_one_by_one(trained, scorer):
    data = trained.prepared.split
    impressions = data.test_impressions
    labels = scorer.label(
        impressions["user_id"],
        impressions["item_id"],
        impressions["ts"],
        data.train_interactions,
        batch_size=7,
    )
    offline = OfflineRows(trained.dataset, trained.store.spec, data.train_interactions)
    expected = scorer.probabilities(offline.impressions(impressions))
    np.testing.assert_allclose(labels, expected, atol=1e-6)
    assert labels.shape == (len(impressions["ts"]), 2)


def test_a_bundle_trained_on_another_spec_is_refused_with_a_clear_message(trained):
    bigger = make_tiny_dataset(seed=3, n_users=12, n_items=40, n_events=400)
    spec = build_spec(bigger)
    store = InMemoryFeatureStore(bigger, spec, bigger.interactions)
    with pytest.raises(
        SpecMismatch,
        match=r"refusing to serve.*field 'history' differs.*vocab_size=31.*vocab_size=41.*retrain",
    ):
        RankScorer.from_bundle(trained.bundle, store)


def test_auto_execution_provider_runs_on_the_cpu_without_cuda_and_scores_the_same(trained, scorer):
    auto = RankScorer.from_bundle(
        trained.bundle, trained.store, ScorerSettings(execution_provider="auto")
    )
    if "CUDAExecutionProvider" not in auto.session.get_providers():
        assert auto.session.get_providers() == ["CPUExecutionProvider"]
    items = np.arange(1, 11)
    np.testing.assert_allclose(auto.score(3, items)[0], scorer.score(3, items)[0], atol=1e-5)
