"""Maximal marginal relevance (Carbonell & Goldstein, 1998): the simple alternative to the DPP.

Each step picks argmax theta * relevance_i - (1 - theta) * max_{j in page} S_ij. Keeping the running
max similarity to the page makes a step one O(n) vector update (O(n k) in all).
"""

from __future__ import annotations

import numpy as np


class MMRGreedy:
    """relevance: (n,) in [0, 1]; similarity: (n, n) with unit diagonal; theta in [0, 1]
    (1 = relevance only). Same step interface as dpp.DPPGreedy."""

    def __init__(self, relevance: np.ndarray, similarity: np.ndarray, theta: float):
        self.theta = min(max(float(theta), 0.0), 1.0)
        self.relevance = self.theta * np.asarray(relevance, dtype=np.float64)
        self.similarity = similarity
        n = len(relevance)
        self.max_similarity = np.zeros(n, dtype=np.float64)  # to the page; 0 while it is empty
        self.selected = np.zeros(n, dtype=bool)
        self._gain = np.empty(n, dtype=np.float64)

    def gains(self) -> np.ndarray:
        gain = self._gain
        np.multiply(self.max_similarity, self.theta - 1.0, out=gain)
        gain += self.relevance
        gain[self.selected] = -np.inf
        return gain

    def add(self, j: int) -> None:
        np.maximum(self.max_similarity, self.similarity[j], out=self.max_similarity)
        self.selected[j] = True


class RelevanceOrder:
    """No diversity: the ranked order (ties keep the list's order)."""

    def __init__(self, relevance: np.ndarray):
        self.relevance = np.asarray(relevance, dtype=np.float64)
        self.selected = np.zeros(len(relevance), dtype=bool)
        self._gain = np.empty(len(relevance), dtype=np.float64)

    def gains(self) -> np.ndarray:
        self._gain[:] = self.relevance
        self._gain[self.selected] = -np.inf
        return self._gain

    def add(self, j: int) -> None:
        self.selected[j] = True
