"""Temporal splits. Training never sees the future of what it is tested on.

* per_user_temporal (primary): each user's last `test_fraction` of interactions by time is test.
* global_time_cut (secondary): everything before a time cut trains, everything at or after tests.
  On ml-100k only about a hundred users have interactions on both sides of an 80% cut, so figures
  under this protocol are noisy.
"""

from __future__ import annotations

import numpy as np

from cascade.data.schema import Table


def per_user_temporal(table: Table, test_fraction: float = 0.2) -> np.ndarray:
    """Boolean test mask: each user's last ceil(test_fraction * n) rows by time (ties by row order).

    Users with a single row keep it in training.
    """
    users, ts = table["user_id"], table["ts"]
    order = np.lexsort((np.arange(len(ts)), ts, users))  # by user, then time, then row
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)  # position within the user's history
    n_test = np.where(counts > 1, np.ceil(counts * test_fraction), 0).astype(np.int64)
    test_sorted = rank >= np.repeat(counts - n_test, counts)
    mask = np.zeros(len(ts), dtype=bool)
    mask[order] = test_sorted
    return mask


def time_cut(table: Table, train_fraction: float = 0.8) -> int:
    """The timestamp at the train_fraction quantile of the table's events."""
    return int(np.quantile(table["ts"], train_fraction, method="higher"))


def global_time_cut(table: Table, train_fraction: float = 0.8) -> tuple[int, np.ndarray]:
    """(cut, test mask): rows with ts >= cut are test."""
    cut = time_cut(table, train_fraction)
    return cut, table["ts"] >= cut


def take(table: Table, mask: np.ndarray) -> Table:
    """Rows of a table where mask is true."""
    return {column: values[mask] for column, values in table.items()}
