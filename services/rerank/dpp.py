"""Fast greedy MAP inference of a DPP (Chen, Zhang & Zhou, NeurIPS 2018), with a sliding window.

The kernel is L = diag(q) S diag(q) with q = exp(alpha * relevance) and S a PSD similarity with
unit diagonal. Then log det(L_Y) = 2 alpha sum(relevance_Y) + log det(S_Y), and adding item i to Y
gains log(q_i^2) + log(d2_i), where d2_i is i's conditional variance in S given Y. We run the
incremental Cholesky on S, not on L: S's entries stay in [-1, 1] whatever alpha is, so a large
trade-off exponent cannot overflow, and "no gain left" is a scale-free test on d2 (O(N k^2) total).

Trade-off: theta in [0, 1) maps to alpha = theta / (2 (1 - theta)), so that log det(L_Y) is
proportional to theta * sum(relevance_Y) + (1 - theta) * log det(S_Y); theta = 0 is diversity only
and theta -> 1 is relevance only (theta = 1 is served by the ranked order, see reranker).
"""

from __future__ import annotations

import numpy as np

MAX_THETA = 0.999  # alpha = 499.5: relevance differences of 1e-3 already outweigh any diversity
EXHAUSTED = 1e-6  # d2 below this: the item adds (almost) nothing to det(S_Y)


def alpha_of(theta: float) -> float:
    """The quality exponent for a relevance/diversity trade-off theta in [0, 1]."""
    theta = min(max(float(theta), 0.0), MAX_THETA)
    return theta / (2.0 * (1.0 - theta))


class DPPGreedy:
    """One greedy MAP step at a time: `gains()` scores every item, `add(j)` conditions on j.

    relevance: (n,) in [0, 1] (normalised rank scores). similarity: (n, n) PSD, unit diagonal,
    float64. window: 0 = plain greedy; w >= 2 conditions each pick on the previous w - 1 picks only
    (every w consecutive items of the feed are jointly diverse; long feeds stay cheap).
    factor: optional reusable (capacity, >= n) float64 buffer for the Cholesky rows.
    """

    def __init__(
        self,
        relevance: np.ndarray,
        similarity: np.ndarray,
        theta: float,
        k: int,
        window: int = 0,
        factor: np.ndarray | None = None,
    ):
        n = len(relevance)
        self.similarity = similarity
        self.log_quality = 2.0 * alpha_of(theta) * np.asarray(relevance, dtype=np.float64)
        self.memory = max(window - 1, 1) if window else max(k, 1)  # rows of conditioning
        if factor is None or factor.shape[0] < self.memory or factor.shape[1] < n:
            factor = np.empty((self.memory, n), dtype=np.float64)
        self.rows = factor[: self.memory, :n]  # rows[t] = Cholesky row of conditioned item t
        self.sliding = bool(window)
        self.d2 = np.diagonal(similarity).astype(np.float64)  # conditional variances, a copy
        self.selected = np.zeros(n, dtype=bool)
        self.conditioned: list[int] = []  # items the next pick is conditioned on, oldest first
        self._gain = np.empty(n, dtype=np.float64)
        self._scratch = np.empty(n, dtype=np.float64)

    def gains(self) -> np.ndarray:
        """(n,) log-det gain of adding each item; -inf where selected or (nearly) no gain left.
        The array is reused: read it before the next call."""
        gain = self._gain
        np.maximum(self.d2, EXHAUSTED, out=gain)
        np.log(gain, out=gain)
        gain += self.log_quality
        gain[(self.d2 <= EXHAUSTED) | self.selected] = -np.inf
        return gain

    def add(self, j: int) -> None:
        self.selected[j] = True
        if self.d2[j] <= EXHAUSTED:  # a relevance fill: j adds nothing to the span, skip it
            return
        if self.sliding and len(self.conditioned) == self.memory:
            self._forget_oldest()
        m = len(self.conditioned)
        pivot = np.sqrt(self.d2[j])
        row = self.rows[m]
        # row = (S[j] - sum_t rows[t, j] * rows[t]) / sqrt(d2_j): the new Cholesky row for all items
        if m:
            np.dot(self.rows[:m, j], self.rows[:m], out=row)
            np.subtract(self.similarity[j], row, out=row)
        else:
            row[:] = self.similarity[j]
        row /= pivot
        np.square(row, out=self._scratch)
        self.d2 -= self._scratch
        self.d2[j] = 0.0  # exact: rounding could leave a tiny positive remainder
        np.maximum(self.d2, 0.0, out=self.d2)
        self.conditioned.append(j)

    def _forget_oldest(self) -> None:
        """Drop the oldest conditioned item: a rank-one Cholesky update of the remaining rows,
        applied to every item's row at once (O(n * window))."""
        m = len(self.conditioned)
        x = self.rows[0].copy()
        for t in range(1, m):
            p = self.conditioned[t]
            r_pp, x_p = self.rows[t, p], x[p]
            r = np.hypot(r_pp, x_p)
            c, s = r / r_pp, x_p / r_pp
            row = self.rows[t]
            row += s * x
            row /= c
            x *= c
            x -= s * row
        self.rows[: m - 1] = self.rows[1:m].copy()
        np.square(x, out=self._scratch)
        self.d2 += self._scratch  # what the forgotten item explained comes back
        self.d2[self.conditioned[1:]] = 0.0
        self.conditioned.pop(0)


def log_det_gain(similarity: np.ndarray, relevance: np.ndarray, theta: float, page: list[int]):
    """log det(L_page) for the greedy's kernel (tests and the benchmark's exactness check)."""
    if not page:
        return 0.0
    sign, logdet = np.linalg.slogdet(similarity[np.ix_(page, page)])
    if sign <= 0:
        return -np.inf
    return float(logdet + 2.0 * alpha_of(theta) * np.sum(np.asarray(relevance)[page]))
