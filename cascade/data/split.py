"""Temporal splits. Training never sees the future of what it is tested on.

* per_user_temporal (primary): each user's last `test_fraction` of interactions by time is test.
* global_time_cut (secondary): everything before a time cut trains, everything at or after tests.
  On ml-100k only about a hundred users have interactions on both sides of an 80% cut, so figures
  under this protocol are noisy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.data.schema import Dataset, Table


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


@dataclass(frozen=True)
class TemporalSplit:
    """One dataset under the per-user temporal protocol, every table cut at the same moment.

    Each user's cut is their first test interaction: impressions at or after it are test too, so
    no training table (history, counters, labels) sees anything from a user's test period.
    """

    train_interactions: Table
    train_impressions: Table
    test_interactions: Table
    test_impressions: Table


def split_dataset(dataset: Dataset, test_fraction: float = 0.2) -> TemporalSplit:
    """The primary protocol applied to interactions and impressions alike."""
    test = per_user_temporal(dataset.interactions, test_fraction)
    test_interactions = take(dataset.interactions, test)
    cut = np.full(dataset.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(cut, test_interactions["user_id"], test_interactions["ts"])
    impressions = dataset.impressions
    impression_test = impressions["ts"] >= cut[impressions["user_id"]]
    return TemporalSplit(
        take(dataset.interactions, ~test),
        take(impressions, ~impression_test),
        test_interactions,
        take(impressions, impression_test),
    )


def concat_by_time(first: Table, second: Table) -> tuple[Table, np.ndarray]:
    """The two tables (same columns) as one, time-ordered, and the order applied (row i of the
    result is row order[i] of first-then-second)."""
    joined = {c: np.concatenate([first[c], second[c].astype(first[c].dtype)]) for c in first}
    order = np.argsort(joined["ts"], kind="stable")
    return {c: v[order] for c, v in joined.items()}, order
