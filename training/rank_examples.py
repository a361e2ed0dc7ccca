"""Ranker examples on the distribution it serves: real recall outputs at the request time.

Logged impressions plus uniform negatives teach the ranker to tell a played item from a random
one; serving asks it to order recall's best candidates, most of them plausible. Here each
training user makes `requests_per_user` requests inside the training period (at evenly spaced
points of their history); each request's candidates are the serving recall merge's answer
(services.recall.server.build_channels + Merger over the bundle being trained) given only what
the user had consumed before it, and a candidate's labels are what the user went on to do with it
later in the training period ("entire-space" negatives: every candidate not acted on). The result
has the impressions table's columns, so the rest of training (rows, labels, early stopping) is
unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cascade.artifacts import Bundle
from cascade.data.schema import Table
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import FeatureSpec, consumed_before, history_before
from services.rank.train import RecallExamples
from training.prerank_examples import recall_candidates, recall_merger
from training.served_recall import served_recall

# The interaction flag that labels each ranking task (a played item was clicked first).
TASK_FLAG = {
    "click": "play", "play": "play", "complete": "complete", "like": "like", "share": "share",
}  # fmt: skip


def request_points(train: Table, settings: RecallExamples) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, request times): evenly spaced points inside each user's training history."""
    order = np.lexsort((train["ts"], train["user_id"]))
    users, times = train["user_id"][order], train["ts"][order]
    ids, start, counts = np.unique(users, return_index=True, return_counts=True)
    enough = counts >= settings.min_history
    ids, start, counts = ids[enough], start[enough], counts[enough]
    n = settings.requests_per_user
    fractions = np.arange(1, n + 1) / (n + 1)
    offsets = np.floor(counts[:, None] * fractions[None, :]).astype(np.int64)
    user_ids = np.repeat(ids, n)
    ts = times[(start[:, None] + offsets).reshape(-1)]
    if len(user_ids) > settings.max_requests:
        keep = np.random.default_rng(settings.seed).choice(
            len(user_ids), settings.max_requests, replace=False
        )
        keep.sort()
        user_ids, ts = user_ids[keep], ts[keep]
    return user_ids.astype(np.int64), ts.astype(np.int64)


def acted_after(
    log: Table, user_ids: np.ndarray, ts: np.ndarray, item_ids: np.ndarray, flag: str
) -> np.ndarray:
    """(R, K) True where the request's user has an interaction with the candidate at or after
    the request time with `flag` set (several requests per user allowed)."""
    rows = log[flag].astype(bool)
    users, items, times = log["user_id"][rows], log["item_id"][rows], log["ts"][rows]
    n_items = int(max(items.max(initial=0), item_ids.max(initial=0))) + 1
    # The latest time each (user, item) pair was acted on: acted after ts iff latest >= ts.
    keys = users.astype(np.int64) * n_items + items
    order = np.lexsort((times, keys))
    keys, times = keys[order], times[order]
    last = np.r_[keys[1:] != keys[:-1], True]
    keys, latest = keys[last], times[last]
    wanted = user_ids[:, None].astype(np.int64) * n_items + item_ids
    if len(keys) == 0:
        return np.zeros(wanted.shape, dtype=bool)
    position = np.clip(np.searchsorted(keys, wanted), 0, len(keys) - 1)
    return (keys[position] == wanted) & (latest[position] >= ts[:, None]) & (item_ids > 0)


def recall_examples(
    bundle: Bundle,
    store: InMemoryFeatureStore,
    spec: FeatureSpec,
    train: Table,
    tasks: tuple[str, ...],
    settings: RecallExamples | None = None,
) -> Table:
    """An impressions-like table (user_id, item_id, ts, channel_mask, channel_position and one
    bool column per task) of recall candidates at training-period requests, labelled by what
    followed in `train`."""
    settings = settings or RecallExamples()
    user_ids, ts = request_points(train, settings)
    history = history_before(train, user_ids, ts, spec.history_length)
    consumed = consumed_before(train, user_ids, ts)
    served = served_recall(settings.profile)
    count = settings.candidates or served.count
    # The profile's channels that the bundle has (a model-free bundle has no two-tower or MF).
    component = bundle.component("recall")
    recall = served.settings
    has = {n: getattr(recall, n).enabled and n in component for n in ("two_tower", "mf")}
    recall = replace(
        recall,
        two_tower=replace(recall.two_tower, enabled=has["two_tower"]),
        mf=replace(recall.mf, enabled=has["mf"]),
    )
    merger = recall_merger(bundle, store, recall)
    masks = np.zeros((len(user_ids), count), dtype=np.uint32)
    positions = np.zeros((len(user_ids), count), dtype=np.uint32)
    try:
        item_ids, valid = recall_candidates(
            merger, user_ids, ts, history, consumed, count, masks, positions
        )
    finally:
        merger.close()
    labels = {t: acted_after(train, user_ids, ts, item_ids, TASK_FLAG[t]) & valid for t in tasks}
    positive = np.logical_or.reduce(list(labels.values()))
    rng = np.random.default_rng(settings.seed)
    priority = np.where(positive, 2.0, np.where(valid, rng.random(valid.shape), -1.0))
    chosen = np.argsort(-priority, axis=1, kind="stable")[:, : settings.keep]
    kept = np.take_along_axis(valid, chosen, axis=1)
    flat = lambda a: np.take_along_axis(a, chosen, axis=1)[kept]  # noqa: E731
    n = kept.sum(axis=1)
    table = {
        "user_id": np.repeat(user_ids, n),
        "item_id": flat(item_ids),
        "ts": np.repeat(ts, n),
        "channel_mask": flat(masks),  # the recall channels that found it (a ranker feature)
        "channel_position": flat(positions),  # its best place in their answers (another)
        **{t: flat(labels[t]) for t in tasks},
    }
    order = np.lexsort((table["item_id"], table["ts"], table["user_id"]))
    return {k: v[order] for k, v in table.items()}
