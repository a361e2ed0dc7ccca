"""The FAISS index factory: the right kind per catalog size, and recall close to exact search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cascade.index_search import search_parameters
from services.recall.index import (
    IndexSettings,
    build_index,
    index_kind,
    load_index,
    save_index,
    search,
)


def clustered_vectors(n: int, dim: int = 16, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    shared = [len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, exact, strict=True)]
    return float(np.mean(shared))


@pytest.fixture(autouse=True)
def one_thread():
    faiss.omp_set_num_threads(1)


def test_kind_follows_the_catalog_size():
    settings = IndexSettings(exact_threshold=1_000)
    assert settings.kind_for(1_000) == "flat"
    assert settings.kind_for(1_001) == "hnsw"
    assert IndexSettings(exact_threshold=1_000, large_kind="ivf").kind_for(5_000) == "ivf"
    with pytest.raises(ValueError, match="large_kind"):
        IndexSettings(large_kind="lsh").kind_for(10**7)


def test_flat_search_is_exact_and_ids_start_at_one():
    vectors = clustered_vectors(500)
    index = build_index(vectors, IndexSettings())
    assert index_kind(index) == "flat"
    queries = clustered_vectors(5, seed=1)
    ids, scores = search(index, queries, 10)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1  # position p is item p + 1
    np.testing.assert_array_equal(ids, expected)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_large_catalog_index_recalls_nearly_what_exact_search_finds(kind):
    vectors = clustered_vectors(6_000)
    settings = IndexSettings(exact_threshold=1_000, large_kind=kind)
    index = build_index(vectors, settings)
    assert index_kind(index) == kind
    k = 100
    queries = clustered_vectors(50, seed=2)
    exact, _ = search(build_index(vectors, settings, kind="flat"), queries, k, settings)
    found, _ = search(index, queries, k, settings)
    assert overlap(found, exact) >= 0.9


def test_hnsw_search_depth_is_at_least_k_per_call(tmp_path):
    settings = IndexSettings(exact_threshold=10, hnsw_ef_search=64)
    index = build_index(clustered_vectors(200), settings)
    assert search_parameters(index, 300, settings.hnsw_ef_search).efSearch == 300
    assert search_parameters(index, 20, settings.hnsw_ef_search).efSearch == 64
    # Per call: the saved index keeps its own depth, whatever the requests asked.
    assert faiss.downcast_index(index).hnsw.efSearch == 64
    save_index(index, tmp_path / "items.faiss")
    loaded = load_index(tmp_path / "items.faiss")
    queries = clustered_vectors(3, seed=3)
    np.testing.assert_array_equal(
        search(index, queries, 150, settings)[0], search(loaded, queries, 150, settings)[0]
    )
    # 150 results from a graph searched 150 wide: every one found, none missing (id 0).
    assert (search(loaded, queries, 150, settings)[0] > 0).all()
