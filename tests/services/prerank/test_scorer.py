"""The serving scorer: dot-product order, unknown items last, spec and provider checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from services.prerank.scorer import CPU, PrerankScorer, SpecMismatch, session_providers


@pytest.fixture(scope="module")
def scorer(distilled):
    return PrerankScorer.from_bundle(distilled.bundle, distilled.world.store)


def test_orders_by_dot_product_of_user_and_item_vectors(scorer):
    items = np.arange(1, 31)
    user = scorer.user_vector(3)
    expected = scorer.vectors[items] @ user[0]
    scores, known = scorer.score(3, items)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert known.all()
    order, all_scores, unknown = scorer.top(3, items, 10)
    assert unknown == 0
    np.testing.assert_array_equal(order, np.argsort(-expected, kind="stable")[:10])
    assert np.all(np.diff(all_scores[order]) <= 0)


def test_unknown_items_are_scored_last_and_counted(scorer):
    items = np.array([5, 999, 0, 7, -3, 2])
    order, scores, unknown = scorer.top(3, items, 6)
    assert unknown == 3
    assert set(items[order[:3]]) == {5, 7, 2}
    assert list(items[order[3:]]) == [999, 0, -3]  # input order among the unknown
    assert np.isneginf(scores[[1, 2, 4]]).all()


def test_recent_items_change_the_user_vector(scorer):
    plain = scorer.user_vector(3)
    recent = scorer.user_vector(3, np.array([11, 12, 13]))
    assert not np.allclose(plain, recent)


def test_refuses_a_store_built_on_another_spec(distilled):
    world = distilled.world
    other = build_spec(world.dataset, {"item_id": 16})
    store = InMemoryFeatureStore(world.dataset, other, world.split.train_interactions)
    with pytest.raises(SpecMismatch, match="prerank artifact .*feature_spec.json"):
        PrerankScorer.from_bundle(distilled.bundle, store)


def test_execution_provider_falls_back_to_cpu_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING):
        assert session_providers("CUDAExecutionProvider", [CPU]) == [CPU]
    assert "falling back" in caplog.text and "CUDAExecutionProvider" in caplog.text
    both = ["CUDAExecutionProvider", CPU]
    assert session_providers("CUDAExecutionProvider", both) == both
    assert session_providers(CPU) == [CPU]


def test_the_store_fast_path_builds_the_same_user_inputs_as_rank_rows(scorer):
    from cascade.rows import online_rows

    for user in (1, 3, 7, 0):
        rows = online_rows(scorer.store, user, np.zeros(1, dtype=np.int64))
        expected = scorer.session.run([scorer.output], {n: rows[n] for n in scorer.input_names})
        np.testing.assert_array_equal(scorer.user_vector(user), expected[0])
