"""Offline tables of the non-neural recall channels, built from training interactions (numpy only).

One npz per channel in the bundle's "recall" component: item-CF neighbours (CSR: a million-item
catalogue keeps only the pairs it has, not 200 slots an item), profile indexes per
creator and per category, the follow graph with each account's uploads and likes, the catalog by
upload time (fresh) and the trending list (popular). Serving reads them back with `load_tables`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cascade.artifacts import Bundle, BundleWriter
from cascade.baselines import EASE
from cascade.data.schema import Dataset, Table

COMPONENT = "recall"
TABLES = ("item_cf", "profile", "social", "fresh", "popular")
CF_MODELS = ("co_consumption", "ease")
DAY = 86_400


@dataclass(frozen=True)
class TableSettings:
    cf_neighbours: int = 200  # neighbours kept per item
    # "co_consumption": the scores below; "ease": EASE's item-item weights B (Steck, 2019), each
    # item's neighbours its largest |B| entries (signed): dense n x n, small catalogs only.
    cf_model: str = "co_consumption"
    cf_ease_l2: float = 500.0  # EASE's lambda (the baseline's)
    cf_window: int = 30  # co-consumption counts between items at most this many plays apart
    cf_time_scale_s: float = 3 * DAY  # pairs consumed further apart in time count less
    cf_popularity_penalty: float = 0.6  # score / (n_a^(1-p) n_b^p): p > 0.5 damps popular targets
    trending_half_life_s: float = 7 * DAY  # popular: decay of a play's weight with its age
    index_per_group: int = 500  # profile: items kept per creator and per category
    social_per_account: int = 100  # social: newest uploads + likes kept per account

    def __post_init__(self) -> None:
        if self.cf_model not in CF_MODELS:
            raise ValueError(f"cf_model must be one of {CF_MODELS}, got {self.cf_model!r}")
        if self.cf_neighbours < 1:
            raise ValueError(f"cf_neighbours must be >= 1, got {self.cf_neighbours}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TableSettings:
        """Settings recorded in a bundle; bundles from before `cf_model` existed get its default."""
        return cls(**values)


def build_tables(
    dataset: Dataset, train: Table, settings: TableSettings | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Every channel's arrays, computed from the training interactions only."""
    settings = settings or TableSettings()
    as_of = int(train["ts"].max())
    trending = _trending(train, dataset.n_items, as_of, settings.trending_half_life_s)
    return {
        "item_cf": (
            _ease_neighbours(train, dataset.n_users, dataset.n_items, settings)
            if settings.cf_model == "ease"
            else _item_cf(train, dataset.n_items, settings)
        ),
        "profile": _profile(dataset, trending, settings.index_per_group),
        "social": _social(dataset, train, settings.social_per_account),
        "fresh": _fresh(dataset),
        "popular": _popular(trending, as_of),
    }


def save_tables(writer: BundleWriter, tables: dict[str, dict[str, np.ndarray]]) -> list[str]:
    return [
        writer.save_npz(COMPONENT, f"{name}.npz", **arrays).name for name, arrays in tables.items()
    ]


def load_tables(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    """Checksum-verified tables; ArtifactError names the missing or damaged file."""
    tables = {name: bundle.load_npz(COMPONENT, f"{name}.npz") for name in TABLES}
    tables["item_cf"] = item_cf_csr(tables["item_cf"])
    return tables


def _trending(train: Table, n_items: int, as_of: int, half_life_s: float) -> np.ndarray:
    """(n_items,) time-decayed play counts (likes count double)."""
    age = np.maximum(as_of - train["ts"], 0)
    weight = 0.5 ** (age / half_life_s) * (1.0 + train["like"])
    return np.bincount(train["item_id"], weights=weight, minlength=n_items)


def _item_cf(train: Table, n_items: int, settings: TableSettings) -> dict[str, np.ndarray]:
    """Top neighbours per item by time-decayed, popularity-penalised co-consumption."""
    order = np.lexsort((train["ts"], train["user_id"]))
    users, items, ts = train["user_id"][order], train["item_id"][order], train["ts"][order]
    history_length = np.bincount(users)[users]
    # Heavy users co-consume everything with everything: damp them (IUF-style).
    user_weight = 1.0 / np.log2(2.0 + history_length)
    sources, targets, weights = [], [], []
    for gap in range(1, settings.cf_window + 1):
        same = users[gap:] == users[:-gap]
        a, b = items[:-gap][same], items[gap:][same]
        w = (
            np.exp(-(ts[gap:] - ts[:-gap])[same] / settings.cf_time_scale_s)
            * user_weight[gap:][same]
        )
        sources += [a, b]
        targets += [b, a]
        weights += [w, w]
    source, target, weight = (np.concatenate(x) for x in (sources, targets, weights))
    distinct = source != target
    keys = source[distinct] * n_items + target[distinct]
    unique, inverse = np.unique(keys, return_inverse=True)
    together = np.bincount(inverse, weights=weight[distinct])
    source, target = unique // n_items, unique % n_items
    popularity = np.maximum(
        np.bincount(
            np.unique(train["user_id"] * n_items + train["item_id"]) % n_items, minlength=n_items
        ),
        1,
    ).astype(np.float64)
    p = settings.cf_popularity_penalty
    score = together / (popularity[source] ** (1 - p) * popularity[target] ** p)
    ptr, neighbours, weights_out = _csr(source, target, score, n_items, settings.cf_neighbours)
    return {"ptr": ptr, "neighbours": neighbours, "weights": weights_out}


def _ease_neighbours(
    train: Table, n_users: int, n_items: int, settings: TableSettings, block: int = 512
) -> dict[str, np.ndarray]:
    """Item i's neighbours: the items j with the largest |B[i, j]| of EASE's weights, B[i, j]
    kept signed, so summing a user's seeds' rows restricted to them is EASE's own score
    (score(u, j) = sum over i in u's history of B[i, j]) truncated to the strongest entries."""
    weights = EASE(l2=settings.cf_ease_l2).fit(train, n_users, n_items).weights  # raises if large
    k = min(settings.cf_neighbours, n_items)
    neighbours = np.zeros((n_items, k), dtype=np.int64)
    values = np.zeros((n_items, k), dtype=np.float32)
    for start in range(0, n_items, block):  # blocks of rows: |B| is never a second n x n copy
        rows = weights[start : start + block]
        strength = np.abs(rows)
        top = np.argpartition(-strength, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(strength, top, axis=1)
        order = np.lexsort((top, -picked), axis=1)  # strongest first, ties by the smaller id
        top = np.take_along_axis(top, order, axis=1)
        signed = np.take_along_axis(rows, top, axis=1)
        nonzero = signed != 0  # an item never co-consumed has no neighbour: 0-padded
        neighbours[start : start + block] = np.where(nonzero, top, 0)
        values[start : start + block] = np.where(nonzero, signed, 0.0)
    return _rows_as_csr(neighbours, values)


def _rows_as_csr(neighbours: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """(n_items, k) 0-padded neighbour rows as the item-CF table's CSR layout."""
    kept = neighbours > 0
    ptr = np.r_[0, np.cumsum(kept.sum(axis=1))].astype(np.int64)
    return {"ptr": ptr, "neighbours": neighbours[kept], "weights": weights[kept]}


def item_cf_csr(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The item-CF table as CSR; a bundle written with dense (n_items, k) rows is converted."""
    if "ptr" in table:
        return table
    return _rows_as_csr(table["neighbours"], table["weights"])


def neighbours_of(table: dict[str, np.ndarray], item_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One item's neighbours and weights in a CSR item-CF table, best first (empty if unknown)."""
    ptr = table["ptr"]
    if not 0 <= item_id < len(ptr) - 1:
        return table["neighbours"][:0], table["weights"][:0]
    lo, hi = ptr[item_id], ptr[item_id + 1]
    return table["neighbours"][lo:hi], table["weights"][lo:hi]


def _csr(group: np.ndarray, item: np.ndarray, score: np.ndarray, n_groups: int, per_group: int):
    """CSR lists per group sorted by score (best first), each cut to per_group entries."""
    order = np.lexsort((item, -score, group))
    group, item, score = group[order], item[order], score[order]
    starts = np.searchsorted(group, np.arange(n_groups))
    keep = np.arange(len(group)) - starts[group] < per_group
    counts = np.bincount(group[keep], minlength=n_groups)
    return np.r_[0, np.cumsum(counts)].astype(np.int64), item[keep], score[keep].astype(np.float32)


def _profile(dataset: Dataset, trending: np.ndarray, per_group: int) -> dict[str, np.ndarray]:
    """Per creator and per category: its items by trending score, fresher items first on ties."""
    items = dataset.items
    ids, creators = items["item_id"], items["creator_id"]
    # A small freshness term orders never-played items newest first and breaks popularity ties.
    span = max(1, int(items["upload_ts"].max() - items["upload_ts"].min()))
    score = np.log1p(trending[ids]) + 1e-3 * (items["upload_ts"] - items["upload_ts"].min()) / span
    creator_ptr, creator_items, creator_scores = _csr(
        creators, ids, score, int(creators.max()) + 1, per_group
    )
    n_categories = len(dataset.meta["categories"])
    categories = items["categories"].astype(np.int64)  # (n, 6), 0-padded
    has = categories > 0
    category_ptr, category_items, category_scores = _csr(
        categories[has],
        np.broadcast_to(ids[:, None], has.shape)[has],
        np.broadcast_to(score[:, None], has.shape)[has],
        n_categories,
        per_group,
    )
    return {
        "creator_ptr": creator_ptr,
        "creator_items": creator_items,
        "creator_scores": creator_scores,
        "category_ptr": category_ptr,
        "category_items": category_items,
        "category_scores": category_scores,
    }


def _social(dataset: Dataset, train: Table, per_account: int) -> dict[str, np.ndarray]:
    """Who follows whom (CSR by follower) and each account's newest uploads and likes."""
    n_users = dataset.n_users
    follows = dataset.follows
    order = np.lexsort((follows["followee_id"], follows["follower_id"]))
    follow_counts = np.bincount(follows["follower_id"], minlength=n_users)[:n_users]
    creators, items = dataset.creators, dataset.items
    # A creator who joined after the creators table was written (the two-sided world's joins)
    # has no account: their uploads reach followers of nobody, and their id must not overflow.
    n_creators = max(creators["creator_id"].max(initial=0), items["creator_id"].max(initial=0))
    account_of_creator = np.zeros(int(n_creators) + 1, dtype=np.int64)
    account_of_creator[creators["creator_id"]] = creators["user_id"]
    uploader = account_of_creator[items["creator_id"]]
    uploaded = uploader > 0
    liked = train["like"]
    account = np.concatenate([uploader[uploaded], train["user_id"][liked]])
    item = np.concatenate([items["item_id"][uploaded], train["item_id"][liked]])
    ts = np.concatenate([items["upload_ts"][uploaded], train["ts"][liked]])
    account_ptr, account_items, account_ts = _csr(
        account, item, ts.astype(np.float64), n_users, per_account
    )
    return {
        "follow_ptr": np.r_[0, np.cumsum(follow_counts)].astype(np.int64),
        "followees": follows["followee_id"][order].astype(np.int64),
        "account_ptr": account_ptr,
        "account_items": account_items,
        "account_ts": account_ts.astype(np.int64),
    }


def _fresh(dataset: Dataset) -> dict[str, np.ndarray]:
    """The catalog sorted by upload time, for a binary search per request."""
    order = np.argsort(dataset.items["upload_ts"], kind="stable")
    return {
        "item_ids": dataset.items["item_id"][order].astype(np.int64),
        "upload_ts": dataset.items["upload_ts"][order].astype(np.int64),
    }


def _popular(trending: np.ndarray, as_of: int, keep: int = 20_000) -> dict[str, np.ndarray]:
    ids = np.flatnonzero(trending > 0)
    order = np.lexsort((ids, -trending[ids]))[:keep]
    return {
        "item_ids": ids[order].astype(np.int64),
        "scores": trending[ids[order]].astype(np.float32),
        "as_of": np.array(as_of, dtype=np.int64),
    }
