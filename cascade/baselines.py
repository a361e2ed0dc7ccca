"""Non-neural baselines every stage must beat: MostPopular, ItemKNN and EASE.

Each model has fit(train interactions, n_users, n_items) and score(user_ids) -> (n, n_items), so any
of them plugs into `cascade.evaluation.evaluate_ranking`. `evaluate_baselines` prints the yardstick
table (`cascade baselines`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from cascade.data.schema import Dataset, Table
from cascade.data.split import global_time_cut, per_user_temporal, take
from cascade.evaluation import UserItems, evaluate_ranking
from cascade.progress import track

# Below this many evaluated users the averages rest on too few users to separate models reliably
# (ml-100k's global time cut leaves about a hundred).
NOISY_BELOW = 200


class CatalogTooLarge(ValueError):
    """The model needs dense item x item matrices that would not fit for this catalog."""

    def __init__(self, message: str, max_items: int):
        super().__init__(message)
        self.max_items = max_items


class Recommender(Protocol):
    name: str

    def fit(self, train: Table, n_users: int, n_items: int) -> Recommender: ...

    def score(self, user_ids: np.ndarray) -> np.ndarray: ...  # (n, n_items)


def cooccurrence_blocks(
    by_user: UserItems, max_cells: int = 1 << 24
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first item, block) with block = rows of the item x item co-occurrence X^T X.

    Built from the sparse histories (work ~ sum of squared history lengths), one bounded block of
    item rows at a time, so memory stays O(max_cells) whatever the catalog size.
    """
    n_items = by_user.n_items
    by_item = by_user.transpose()
    user_lengths = by_user.lengths()
    item_of_pair = np.repeat(np.arange(n_items), by_item.lengths())
    work = np.bincount(item_of_pair, weights=user_lengths[by_item.items], minlength=n_items)
    start = 0
    while start < n_items:
        rows_cap = max(1, max_cells // n_items)
        cumulative = np.cumsum(work[start : start + rows_cap])
        end = start + max(1, int(np.searchsorted(cumulative, max_cells, side="right")))
        lo, hi = by_item.indptr[start], by_item.indptr[end]
        item_row = np.repeat(np.arange(end - start), by_item.lengths()[start:end])
        pair, other_item = by_user.pairs(by_item.items[lo:hi])
        cells = item_row[pair] * n_items + other_item
        block = np.bincount(cells, minlength=(end - start) * n_items)
        yield start, block.reshape(end - start, n_items)
        start = end


class MostPopular:
    """The same list for everyone: items by number of training interactions."""

    name = "MostPopular"

    def fit(self, train: Table, n_users: int, n_items: int) -> MostPopular:
        self.counts = np.bincount(train["item_id"], minlength=n_items).astype(np.float32)
        return self

    def score(self, user_ids: np.ndarray) -> np.ndarray:
        # A read-only view: one row of memory whatever the batch size.
        return np.broadcast_to(self.counts, (len(user_ids), len(self.counts)))


class ItemKNN:
    """Item-based top-N (Deshpande & Karypis): cosine similarity on the binary user x item matrix.

    Each item keeps its `neighbours` most similar items; score(u, i) = sum over the user's items j
    of sim(j, i) when i is among j's neighbours. On ml-100k (validation slice as for EASE)
    NDCG@10 rises from 20 to 100 neighbours (0.180 -> 0.191) and is flat beyond.
    """

    name = "ItemKNN"

    def __init__(self, neighbours: int = 100, max_items: int = 200_000):
        self.neighbours = neighbours
        self.max_items = max_items

    def fit(self, train: Table, n_users: int, n_items: int) -> ItemKNN:
        if n_items > self.max_items:
            raise CatalogTooLarge(
                f"ItemKNN: {n_items:,} items exceed max_items={self.max_items:,}", self.max_items
            )
        self.history = UserItems.from_table(train, n_users, n_items)
        k = min(self.neighbours, n_items)
        norms = np.sqrt(np.bincount(self.history.items, minlength=n_items)).astype(np.float32)
        inverse_norm = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self.neighbour_items = np.zeros((n_items, k), dtype=np.int64)
        self.neighbour_sims = np.zeros((n_items, k), dtype=np.float32)
        for start, counts in cooccurrence_blocks(self.history):
            rows = np.arange(start, start + len(counts))
            sims = counts * inverse_norm[rows, None] * inverse_norm[None, :]  # (block, n_items)
            sims[np.arange(len(rows)), rows] = 0.0  # an item is not its own neighbour
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            self.neighbour_items[rows] = top
            self.neighbour_sims[rows] = np.take_along_axis(sims, top, axis=1)
        return self

    def score(self, user_ids: np.ndarray) -> np.ndarray:
        n_items = self.history.n_items
        rows, items = self.history.pairs(user_ids)
        k = self.neighbour_items.shape[1]
        cells = np.repeat(rows, k) * n_items + self.neighbour_items[items].ravel()
        scores = np.bincount(
            cells, weights=self.neighbour_sims[items].ravel(), minlength=len(user_ids) * n_items
        )
        return scores.reshape(len(user_ids), n_items)


class EASE:
    """EASE (Steck, 2019): B = I - P / diag(P), P = (X^T X + lambda I)^-1, diagonal forced to 0.

    lambda: on ml-100k (the last 20% of each user's training history held out) NDCG@10 is flat
    from 100 to 1000 (0.169-0.172) and drops at 2000 (0.164); 500, the usual value, is kept.
    """

    name = "EASE"

    def __init__(self, l2: float = 500.0, max_items: int = 20_000):
        self.l2 = l2
        self.max_items = max_items

    def fit(self, train: Table, n_users: int, n_items: int) -> EASE:
        if n_items > self.max_items:
            gib = 3 * 8 * n_items**2 / 2**30
            raise CatalogTooLarge(
                f"EASE: {n_items:,} items exceed max_items={self.max_items:,} (needs dense "
                f"{n_items:,} x {n_items:,} matrices, about {gib:.0f} GiB); use ItemKNN, or raise "
                "max_items if the memory is there",
                self.max_items,
            )
        self.history = UserItems.from_table(train, n_users, n_items)
        gram = np.zeros((n_items, n_items), dtype=np.float64)
        for start, counts in cooccurrence_blocks(self.history):
            gram[start : start + len(counts)] = counts
        gram[np.diag_indices(n_items)] += self.l2
        precision = np.linalg.inv(gram)
        del gram  # in-place from here on: peak memory stays near three n x n float64 matrices
        precision /= -np.diag(precision).copy()[None, :]
        precision[np.diag_indices(n_items)] = 0.0
        self.weights = precision.astype(np.float32)  # (n_items, n_items)
        return self

    def score(self, user_ids: np.ndarray) -> np.ndarray:
        return self.history.dense(user_ids, dtype=np.float32) @ self.weights


def default_models() -> list[Recommender]:
    return [MostPopular(), ItemKNN(), EASE()]


def _split(dataset: Dataset, protocol: str) -> tuple[Table, Table]:
    interactions = dataset.interactions
    if protocol == "per_user":
        test_mask = per_user_temporal(interactions)
    elif protocol == "global_cut":
        _, test_mask = global_time_cut(interactions)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; choose per_user or global_cut")
    return take(interactions, ~test_mask), take(interactions, test_mask)


def evaluate_baselines(
    dataset: Dataset,
    protocols: Sequence[str] = ("per_user", "global_cut"),
    ks: Sequence[int] = (10, 20),
    progress: bool = True,
    models: Sequence[Recommender] | None = None,
) -> list[dict]:
    """One row per (protocol, model): full-ranking metrics against all items.

    Relevant items are all of a user's test-period interactions (plays), see evaluate_ranking.
    Rows hold: dataset, protocol, model, n_test_users, Recall@k and NDCG@k for each k, then
    HitRate, MRR, Coverage, Novelty and ILD (category sets) at the largest k, and a note.
    """
    ks = sorted(ks)
    k = ks[-1]
    n_items = dataset.n_items
    categories = np.zeros((n_items, dataset.items["categories"].shape[1]), dtype=np.int64)
    categories[dataset.items["item_id"]] = dataset.items["categories"]
    columns = [f"Recall@{k_}" for k_ in ks] + [f"NDCG@{k_}" for k_ in ks]
    columns += [f"HitRate@{k}", "MRR", f"Coverage@{k}", f"Novelty@{k}", f"ILD@{k}"]
    models = list(models) if models is not None else default_models()
    jobs = [(protocol, model) for protocol in protocols for model in models]
    rows = []
    for protocol, model in track(jobs, f"baselines {dataset.name}", "models", enabled=progress):
        train, test = _split(dataset, protocol)
        row: dict[str, object] = {
            "dataset": dataset.name,
            "protocol": protocol,
            "model": model.name,
        }
        started = time.perf_counter()
        try:
            model.fit(train, dataset.n_users, n_items)
        except CatalogTooLarge as error:
            skipped = {"n_test_users": 0, **dict.fromkeys(columns), "seconds": None}
            note = f"skipped: {n_items:,} item ids > max_items={error.max_items:,}"
            rows.append({**row, **skipped, "note": note})
            continue
        result = evaluate_ranking(model.score, train, test, n_items, ks, item_categories=categories)
        n_users = result["n_test_users"]
        note = f"noisy: only {n_users} test users" if n_users < NOISY_BELOW else ""
        row.update({"n_test_users": n_users, **{c: result.get(c) for c in columns}})
        row.update({"seconds": round(time.perf_counter() - started, 2), "note": note})
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table with the rows' keys as columns (in first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(r[i] == "-" or r[i].replace(".", "", 1).isdigit() for r in cells)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])
