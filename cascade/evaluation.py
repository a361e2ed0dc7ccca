"""Full-ranking offline evaluation: every user is ranked against ALL items, no sampled negatives.

`evaluate_ranking` takes any score function (user ids -> (n, n_items) scores), removes the items a
user already consumed in training from the ranking, and scores the top-K pages against the user's
test-period items. `UserItems` holds user histories in a compact CSR form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cascade import metrics
from cascade.data.schema import Table

ScoreFn = Callable[[np.ndarray], np.ndarray]  # (n,) user ids -> (n, n_items) scores


@dataclass(frozen=True)
class UserItems:
    """Distinct items per user (CSR): the items of user u are items[indptr[u]:indptr[u + 1]]."""

    indptr: np.ndarray  # (n_users + 1,)
    items: np.ndarray  # (n_pairs,) sorted within each user
    n_items: int

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
        keys = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))
        counts = np.bincount(keys // n_items, minlength=n_users)
        return cls(np.r_[0, np.cumsum(counts)], keys % n_items, n_items)

    @classmethod
    def from_table(cls, table: Table, n_users: int, n_items: int) -> UserItems:
        return cls.from_pairs(table["user_id"], table["item_id"], n_users, n_items)

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def transpose(self) -> UserItems:
        """The same pairs seen from the items: users per item."""
        users = np.repeat(np.arange(self.n_users), self.lengths())
        return UserItems.from_pairs(self.items, users, self.n_items, self.n_users)

    def pairs(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, items): every item of user_ids[row]; ids outside the table have no items."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        known = (user_ids >= 0) & (user_ids < self.n_users)
        safe = np.where(known, user_ids, 0)
        lengths = np.where(known, self.indptr[safe + 1] - self.indptr[safe], 0)
        ends = np.cumsum(lengths)
        offsets = np.repeat(self.indptr[safe] - (ends - lengths), lengths)
        positions = np.arange(ends[-1] if len(ends) else 0) + offsets
        return np.repeat(np.arange(len(user_ids)), lengths), self.items[positions]

    def dense(self, user_ids: np.ndarray, dtype=bool) -> np.ndarray:
        """(len(user_ids), n_items) indicator matrix of the users' items."""
        rows, items = self.pairs(user_ids)
        matrix = np.zeros((len(user_ids), self.n_items), dtype=dtype)
        matrix[rows, items] = 1
        return matrix


def evaluate_ranking(
    score_fn: ScoreFn,
    train: Table,
    test: Table,
    n_items: int,
    ks: Sequence[int] = (10, 20),
    *,
    item_categories: np.ndarray | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of score_fn, averaged over the evaluated users.

    * Ranked: all item ids 1..n_items-1, minus what the user interacted with in `train`.
    * Relevant: the user's distinct items in `test` (every interaction counts, not only likes),
      minus those already in `train` (they are excluded from the ranking, so could never be hit).
    * Evaluated users: those with train history and at least one relevant item.

    Returns n_test_users, and for each k: Recall@k, NDCG@k, HitRate@k, Coverage@k (share of the
    catalog in any page), Novelty@k (mean -log2 share of train users who had the item), ILD@k
    (1 - Jaccard of category sets, when item_categories, (n_items, C) indexed by id, is given);
    MRR is over the full ranking (no cut-off).
    """
    ks = sorted(ks)
    k_max = ks[-1]
    n_users = int(max(train["user_id"].max(initial=0), test["user_id"].max(initial=0))) + 1
    seen = UserItems.from_table(train, n_users, n_items)
    test_keys = np.unique(test["user_id"] * n_items + test["item_id"])
    train_keys = np.repeat(np.arange(n_users), seen.lengths()) * n_items + seen.items
    relevant_keys = test_keys[~np.isin(test_keys, train_keys)]
    relevant = UserItems.from_pairs(
        relevant_keys // n_items, relevant_keys % n_items, n_users, n_items
    )
    users = np.flatnonzero((seen.lengths() > 0) & (relevant.lengths() > 0))
    if batch_size is None:
        batch_size = max(1, min(1024, (1 << 22) // n_items))

    per_user: dict[str, list[np.ndarray]] = {}
    pages = []
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score_fn(batch), dtype=np.float64)  # (b, n_items), a private copy
        scores[:, 0] = -np.inf  # id 0 is padding, never an item
        scores[seen.pairs(batch)] = -np.inf
        is_relevant = relevant.dense(batch)  # (b, n_items)
        page = metrics.top_k(scores, k_max)  # (b, k_max)
        hits = np.take_along_axis(is_relevant, page, axis=1)
        n_relevant = is_relevant.sum(axis=1)
        values = {"MRR": metrics.reciprocal_rank(metrics.first_relevant_rank(scores, is_relevant))}
        for k in ks:
            values[f"Recall@{k}"] = metrics.recall_at_k(hits, n_relevant, k)
            values[f"NDCG@{k}"] = metrics.ndcg_at_k(hits, n_relevant, k)
            values[f"HitRate@{k}"] = metrics.hit_rate_at_k(hits, k)
            if item_categories is not None:
                values[f"ILD@{k}"] = metrics.ild_jaccard(page[:, :k], item_categories)
        for name, value in values.items():
            per_user.setdefault(name, []).append(value)
        pages.append(page)

    result: dict[str, float] = {"n_test_users": len(users)}
    if not len(users):
        return result
    result.update({name: float(np.concatenate(v).mean()) for name, v in per_user.items()})
    shown = np.concatenate(pages)  # (users, k_max)
    item_users = np.bincount(seen.items, minlength=n_items)
    n_train_users = int((seen.lengths() > 0).sum())
    for k in ks:
        result[f"Coverage@{k}"] = metrics.coverage(shown[:, :k], n_items - 1)
        result[f"Novelty@{k}"] = metrics.novelty(shown[:, :k], item_users, n_train_users)
    return result
