"""Offline metrics: top-K ranking quality, classification quality and beyond-accuracy measures.

Ranking metrics work on a page of recommendations per user, `top_k` -> (n_users, K) item ids, and a
boolean `hits` array of the same shape (is the item at that slot relevant?). Per-user functions
return one value per row; the caller averages over users. Orderings are deterministic: higher
score first, ties broken by the lower item id.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of the k highest scores per row, best first, ties by lower index."""
    scores = np.asarray(scores)
    n, n_columns = scores.shape
    k = min(k, n_columns)
    part = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)  # by index
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(part, order, axis=1)
    # argpartition picks arbitrarily among items tied at the k-th score; redo those rows exactly.
    kth = np.take_along_axis(scores, ranked[:, -1:], axis=1)
    tied = (scores >= kth).sum(axis=1) > k
    if tied.any():
        ranked[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return ranked


def first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(n,) 1-based rank of each row's best relevant item in the full ordering; inf when none.

    The ordering is the one `top_k` uses (score descending, ties by lower index), so the rank is
    <= K exactly when the item shows up in the top-K page.
    """
    n_columns = scores.shape[1]
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)  # (n, 1)
    first_best = np.argmax(relevant & (scores == best), axis=1)[:, None]
    ahead = (scores > best) | ((scores == best) & (np.arange(n_columns) < first_best))
    rank = 1.0 + ahead.sum(axis=1)
    return np.where(relevant.any(axis=1), rank, np.inf)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """(n,) relevant items in the top k / all relevant items of the user (not min(k, n))."""
    return hits[:, :k].sum(axis=1) / np.maximum(n_relevant, 1)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """(n,) binary-gain NDCG: sum of 1/log2(rank + 1) over hits / the same for a perfect page."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.clip(n_relevant, 1, k) - 1]
    return np.where(n_relevant > 0, dcg / ideal, 0.0)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """(n,) 1.0 when at least one relevant item is in the top k."""
    return np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)


def reciprocal_rank(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    """(n,) 1/rank of the first relevant item (0 when none, or when beyond k if k is given)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if k is not None:
        ranks = np.where(ranks <= k, ranks, np.inf)
    return 1.0 / ranks


def _grouped_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    """Per-group Mann-Whitney AUC with tied scores counted as half a win.

    Returns (auc, n_rows, valid): one entry per distinct group in ascending order; valid is false
    for groups with a single class, whose auc is nan.
    """
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], np.asarray(labels)[order].astype(bool)
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]  # a run = equal scores within a group
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    run_start = np.flatnonzero(new_run)
    run_length = np.diff(np.r_[run_start, n])
    # Average 1-based rank of the tied run inside its group.
    run_rank = run_start - group_start[run_start] + (run_length + 1) / 2.0
    rank = np.repeat(run_rank, run_length)
    group_index = np.cumsum(new_group) - 1
    n_rows = np.bincount(group_index)
    n_pos = np.bincount(group_index, weights=y)
    n_neg = n_rows - n_pos
    rank_sum = np.bincount(group_index, weights=rank * y)
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where(valid, auc, np.nan), n_rows, valid


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: P(score of a random positive > a random negative), ties count one half."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    values, _, valid = _grouped_auc(np.zeros(len(labels), dtype=np.int64), labels, scores)
    if not valid[0]:
        raise ValueError("AUC is undefined when the labels hold a single class")
    return float(values[0])


def gauc(user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-user AUC averaged with weights = the user's number of impressions.

    Users whose impressions are all positive or all negative are skipped.
    """
    user_ids = np.asarray(user_ids)
    values, n_rows, valid = _grouped_auc(user_ids, labels, np.asarray(scores, dtype=np.float64))
    if not valid.any():
        raise ValueError("GAUC is undefined: no user has both positive and negative labels")
    return float(np.average(values[valid], weights=n_rows[valid]))


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; probabilities are clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def coverage(pages: np.ndarray, n_catalog: int) -> float:
    """Catalog coverage: distinct items over all pages / the number of items in the catalog."""
    return len(np.unique(pages)) / n_catalog


def novelty(pages: np.ndarray, item_users: np.ndarray, n_users: int) -> float:
    """Mean self-information -log2 p(i) of recommended items, p(i) = item_users[i] / n_users.

    item_users[i] is the number of (training) users who interacted with item i; an item nobody
    interacted with counts as one user so that its information stays finite (log2 n_users bits).
    """
    p = np.maximum(np.asarray(item_users, dtype=np.float64)[pages], 1.0) / n_users
    return float(np.mean(-np.log2(p)))


def _mean_pairwise(similarity: np.ndarray) -> np.ndarray:
    """(n,) mean of 1 - similarity over the unordered pairs i < j of each (n, K, K) matrix."""
    k = similarity.shape[1]
    upper = np.triu_indices(k, 1)
    return (1.0 - similarity[:, upper[0], upper[1]]).mean(axis=1)


def ild_cosine(pages: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """(n,) intra-list diversity: mean over item pairs of a page of 1 - cosine(vector_i, vector_j).

    A zero vector has cosine 0 with everything.
    """
    vectors = np.asarray(item_vectors, dtype=np.float64)[pages]  # (n, K, dim)
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return _mean_pairwise(np.einsum("nkd,njd->nkj", unit, unit))


def ild_jaccard(pages: np.ndarray, item_categories: np.ndarray) -> np.ndarray:
    """(n,) intra-list diversity over category sets: mean over item pairs of 1 - Jaccard(A, B).

    item_categories is (n_items, MAX_CATEGORIES) of category ids, 0-padded; 0 is not a category.
    Two items with no category at all have similarity 0 (diversity 1): nothing says they agree.
    """
    codes = np.asarray(item_categories, dtype=np.int64)
    multi_hot = np.zeros((len(codes), int(codes.max(initial=0)) + 1), dtype=np.float64)
    np.put_along_axis(multi_hot, codes, 1.0, axis=1)
    multi_hot[:, 0] = 0.0
    sets = multi_hot[pages]  # (n, K, n_categories)
    shared = np.einsum("nkc,njc->nkj", sets, sets)
    sizes = sets.sum(axis=2)
    union = sizes[:, :, None] + sizes[:, None, :] - shared
    similarity = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    return _mean_pairwise(similarity)
