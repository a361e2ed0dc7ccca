"""Small vectorised helpers the channels share: summing scores per item and cutting to top-k."""

from __future__ import annotations

import numpy as np


def sum_by_item(item_ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique item ids, summed weights) over repeated ids; ids <= 0 are padding and dropped."""
    keep = item_ids > 0
    unique, inverse = np.unique(item_ids[keep], return_inverse=True)
    totals = np.bincount(inverse, weights=weights[keep], minlength=len(unique))
    return unique.astype(np.int64), totals.astype(np.float32)


def best_first(item_ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-scoring items, best first; ties broken by the smaller id (deterministic)."""
    if k <= 0 or len(item_ids) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    if len(item_ids) > k:
        # argpartition first: sorting all of a large pool would cost more than the lookups.
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= threshold
        item_ids, scores = item_ids[keep], scores[keep]
    order = np.lexsort((item_ids, -scores))[:k]
    return item_ids[order].astype(np.int64), scores[order].astype(np.float32)


def csr_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into rows, position in the CSR value arrays) for every entry of the given rows,
    without a Python loop."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = indptr[rows + 1] - indptr[rows]
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    offsets = np.repeat(indptr[rows] - (ends - lengths), lengths)
    positions = np.arange(total) + offsets
    return np.repeat(np.arange(len(rows)), lengths), positions


def recency_weights(n: int, decay: float) -> np.ndarray:
    """decay**position: the newest recent item counts most."""
    return decay ** np.arange(n, dtype=np.float64)
