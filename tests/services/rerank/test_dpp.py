"""Greedy DPP MAP steps against brute force, and degenerate kernels (property-based)."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rerank.dpp import DPPGreedy, alpha_of, log_det_gain
from services.rerank.mmr import MMRGreedy
from services.rerank.rules import PageRules, Rules, select_page

NO_RULES = Rules(max_per_creator=0, max_category_share=1.0, fresh_slots=0)


def random_kernel(rng: np.random.Generator, n: int, dim: int = 3) -> np.ndarray:
    vectors = rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = 0.9 * vectors @ vectors.T
    np.fill_diagonal(similarity, 1.0)
    return similarity


def conditional_variance(similarity: np.ndarray, given: list[int], i: int) -> float:
    if not given:
        return similarity[i, i]
    block = similarity[np.ix_(given, given)]
    cross = similarity[given, i]
    return similarity[i, i] - cross @ np.linalg.solve(block, cross)


def select(relevance, similarity, k, theta, window=0):
    n = len(relevance)
    page = PageRules(np.zeros(n), np.zeros((n, 1)), np.zeros(n, bool), NO_RULES, k)
    step = DPPGreedy(relevance, similarity, theta, k, window)
    return select_page(step, relevance, page, k)


def test_each_greedy_step_is_the_exhaustive_best_log_det_gain():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, k, theta = 8, 5, float(rng.uniform(0, 0.95))
        similarity, relevance = random_kernel(rng, n), rng.random(n)
        order = select(relevance, similarity, k, theta).order.tolist()
        for t, chosen in enumerate(order):
            before = order[:t]
            candidates = [i for i in range(n) if i not in before]
            gains = [
                log_det_gain(similarity, relevance, theta, [*before, i])
                - log_det_gain(similarity, relevance, theta, before)
                for i in candidates
            ]
            assert candidates[int(np.argmax(gains))] == chosen


def test_sliding_window_conditions_on_the_last_window_minus_one_picks():
    rng = np.random.default_rng(1)
    for window in (2, 3):
        n, k, theta = 9, 6, 0.5
        similarity, relevance = random_kernel(rng, n), rng.random(n)
        step = DPPGreedy(relevance, similarity, theta, k, window)
        picks: list[int] = []
        for _ in range(k):
            gains = step.gains().copy()
            given = picks[-(window - 1) :]
            for i in set(range(n)) - set(picks):
                expected = np.log(conditional_variance(similarity, given, i))
                expected += 2 * alpha_of(theta) * relevance[i]
                assert abs(gains[i] - expected) < 1e-6
            j = int(np.argmax(gains))
            picks.append(j)
            step.add(j)


def test_greedy_is_exact_for_one_item_and_close_to_brute_force_map():
    rng = np.random.default_rng(2)
    ratios = []
    for _ in range(20):
        n, theta = 8, 0.6
        similarity, relevance = random_kernel(rng, n), rng.random(n)
        for k in (1, 3):
            greedy = log_det_gain(
                similarity, relevance, theta, select(relevance, similarity, k, theta).order.tolist()
            )
            best = max(
                log_det_gain(similarity, relevance, theta, list(subset))
                for subset in itertools.combinations(range(n), k)
            )
            assert greedy <= best + 1e-9
            if k == 1:
                assert greedy == best
            else:
                ratios.append(np.exp(greedy - best))
    assert np.median(ratios) > 0.9  # det(greedy) / det(MAP), typically 1


def test_duplicates_and_exhausted_kernel_fill_by_relevance():
    similarity = np.ones((4, 4))  # four copies of one item: rank 1
    relevance = np.array([0.2, 1.0, 0.5, 0.7])
    selection = select(relevance, similarity, 4, 0.5)
    assert selection.order.tolist() == [1, 3, 2, 0]
    assert selection.reasons.tolist() == [0, 2, 2, 2]  # relevance, then relevance fill


def test_mmr_prefers_a_dissimilar_item_over_a_near_duplicate():
    similarity = np.array([[1.0, 0.99, 0.0], [0.99, 1.0, 0.0], [0.0, 0.0, 1.0]])
    relevance = np.array([1.0, 0.95, 0.8])
    n = 3
    page = PageRules(np.zeros(n), np.zeros((n, 1)), np.zeros(n, bool), NO_RULES, 2)
    selection = select_page(MMRGreedy(relevance, similarity, 0.5), relevance, page, 2)
    assert selection.order.tolist() == [0, 2]
    assert selection.reasons.tolist() == [0, 1]  # relevance, diversity


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 12),
    k=st.integers(0, 20),
    theta=st.floats(0.0, 1.0),
    window=st.sampled_from([0, 2, 4]),
    duplicates=st.booleans(),
    equal_scores=st.booleans(),
    zero_vectors=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_degenerate_kernels_never_crash_or_return_nan(
    n, k, theta, window, duplicates, equal_scores, zero_vectors, seed
):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 2))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if duplicates and n > 1:
        vectors[n // 2 :] = vectors[0]
    vectors[:zero_vectors] = 0.0
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, 1.0)
    relevance = np.full(n, 0.5) if equal_scores else rng.random(n)
    for step in (
        DPPGreedy(relevance, similarity, theta, k, window),
        MMRGreedy(relevance, similarity, theta),
    ):
        page = PageRules(np.zeros(n), np.zeros((n, 1)), np.zeros(n, bool), NO_RULES, k)
        selection = select_page(step, relevance, page, k)
        assert len(selection.order) == min(k, n)
        assert len(set(selection.order.tolist())) == len(selection.order)
        assert not np.isnan(step.gains()).any()
