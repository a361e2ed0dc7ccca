"""The similarity S of the rerank kernel: item-embedding cosine, blended with shared creator and
shared category, built per request into reused buffers.

S = w_e * cos(embeddings) + w_g * cos(category multi-hot) + w_c * [same known creator], weights
normalised to sum 1, then the diagonal set to 1. Each term is a Gram matrix (PSD) with diagonal
<= its weight, so the sum is PSD and raising the diagonal to 1 keeps it PSD: the DPP's Cholesky
never sees a negative pivot. An item without an embedding (an all-zero row: unseen in training, or
an unknown id) has embedding similarity 0 to everything; creator and category still count.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimilarityWeights:
    embedding: float = 0.5  # cosine of the rerank item embeddings
    category: float = 0.3  # cosine of the category sets
    creator: float = 0.2  # 1 when both items have the same (known) creator

    def __post_init__(self) -> None:
        if min(self.embedding, self.category, self.creator) < 0:
            raise ValueError("similarity weights must be >= 0")

    def normalised(self) -> tuple[float, float, float]:
        total = self.embedding + self.category + self.creator
        if total == 0:
            return 0.0, 0.0, 0.0  # S = identity: every item dissimilar to every other
        return self.embedding / total, self.category / total, self.creator / total


class Workspace:
    """Per-thread buffers for the (n, n) matrices of one request, grown on demand and reused
    (a fresh numpy temporary of 1 MB or more pays page faults on every request, about 10x the
    cost of reusing one; 500 x 500 float64 is 2 MB; `python -m bench.rerank_cost` measures it)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def matrices(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarity, scratch) float64 (n, n) views and a bool (n, n) view, contiguous."""
        local = self._local
        if getattr(local, "capacity", -1) < n * n:  # -1: a new thread has no buffers yet
            local.capacity = max(n * n, 128 * 128)
            local.similarity = np.empty(local.capacity, dtype=np.float64)
            local.scratch = np.empty(local.capacity, dtype=np.float64)
            local.same = np.empty(local.capacity, dtype=bool)
        size = n * n
        return (
            local.similarity[:size].reshape(n, n),
            local.scratch[:size].reshape(n, n),
            local.same[:size].reshape(n, n),
        )

    def factor(self, rows: int, n: int) -> np.ndarray:
        """A float64 (>= rows, >= n) buffer for the DPP's Cholesky rows."""
        local = self._local
        held = getattr(local, "factor", None)
        if held is None or held.shape[0] < rows or held.shape[1] < n:
            shape = (max(rows, held.shape[0] if held is not None else 0), max(n, 128))
            local.factor = held = np.empty(shape, dtype=np.float64)
        return held


def item_similarity(
    vectors: np.ndarray,  # (n, dim) L2-normalised, zero rows = no embedding
    creators: np.ndarray,  # (n,) creator ids, 0 = unknown
    categories: np.ndarray,  # (n, max_categories) category ids, 0-padded
    weights: SimilarityWeights,
    workspace: Workspace,
) -> np.ndarray:
    """(n, n) float64 similarity in [-1, 1], PSD, unit diagonal, in the workspace's buffer."""
    n = len(vectors)
    w_embedding, w_category, w_creator = weights.normalised()
    similarity, scratch, same = workspace.matrices(n)
    vectors = np.asarray(vectors, dtype=np.float64)
    np.matmul(vectors, vectors.T, out=similarity)
    similarity *= w_embedding
    if w_category:
        codes = np.asarray(categories, dtype=np.int64)
        present = np.unique(codes[codes > 0])
        hot = np.zeros((n, len(present)), dtype=np.float64)
        rows, cols = np.nonzero(codes > 0)
        hot[rows, np.searchsorted(present, codes[rows, cols])] = 1.0
        norms = np.sqrt(hot.sum(axis=1, keepdims=True))
        hot /= np.where(norms > 0, norms, 1.0)
        np.matmul(hot, hot.T, out=scratch)
        scratch *= w_category
        similarity += scratch
    if w_creator:
        creators = np.asarray(creators, dtype=np.int64)
        np.equal(creators[:, None], creators[None, :], out=same)
        same &= (creators > 0)[None, :]
        np.add(similarity, w_creator, out=similarity, where=same)
    np.fill_diagonal(similarity, 1.0)
    return similarity


def normalised_relevance(scores: np.ndarray) -> np.ndarray:
    """Rank scores min-max scaled to [0, 1] per list (scale-free; all equal -> all 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    low, high = scores.min(), scores.max()
    if not high > low:
        return np.zeros_like(scores)
    return (scores - low) / (high - low)
