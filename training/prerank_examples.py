"""Requests over real recall outputs, labelled by the teacher and by what the user went on to play.

A request is (user, time, history before that time); its candidates are the recall merge's answer
run in-process through the serving code (services.recall.server.build_channels + Merger), scored
by the rank teacher (RankScorer, the serving code). The arrays are prerank's `Requests`
(services/prerank/requests.py). Distillation (training period) and the report (test period) both
build their examples here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cascade.artifacts import Bundle
from cascade.data.schema import Table
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import consumed_before, history_before
from cascade.progress import track
from services.prerank.requests import Requests
from services.rank.scorer import RankScorer
from services.recall.channels import RecallContext
from services.recall.merge import Merger
from services.recall.server import RecallSettings, build_channels
from services.recall.tables import load_tables


def recall_merger(
    bundle: Bundle, store: InMemoryFeatureStore, settings: RecallSettings | None = None
) -> Merger:
    """The serving recall merge over the bundle's channels, without per-channel time budgets
    (offline, quality not latency is what matters)."""
    settings = RecallSettings() if settings is None else settings
    channels = build_channels(bundle, load_tables(bundle), store, settings)
    budgets = {k: replace(b, budget_ms=600_000.0) for k, b in settings.budgets().items()}
    return Merger(channels, budgets, overfetch=settings.overfetch, max_workers=1)


def recall_candidates(
    merger: Merger,
    user_ids: np.ndarray,
    ts: np.ndarray,
    history: np.ndarray,
    consumed: list,
    count: int,
    channel_masks: np.ndarray | None = None,
    channel_positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(R, count) merged candidates per request (0-padded) and their validity mask;
    `channel_masks` and `channel_positions`, (R, count) uint32 arrays when given, receive their
    channel tags and best positions in the channels' answers (what recall puts on the wire)."""
    item_ids = np.zeros((len(user_ids), count), dtype=np.int64)
    requests = track(
        zip(user_ids.tolist(), ts.tolist(), strict=True), "recall candidates", "requests", len(ts)
    )
    for row, (user, t) in enumerate(requests):
        recent = history[row][history[row] > 0]
        context = RecallContext(int(user), recent, int(t), True, consumed[row])
        found = merger.recall(context, count, consumed[row]).candidates
        n = len(found.item_ids[:count])
        item_ids[row, :n] = found.item_ids[:count]
        if channel_masks is not None:
            channel_masks[row, :n] = found.channel_masks[:count]
        if channel_positions is not None:
            channel_positions[row, :n] = found.channel_positions[:count]
    return item_ids, item_ids > 0


def teacher_labels(
    scorer: RankScorer, requests: Requests, interactions: Table
) -> tuple[np.ndarray, np.ndarray]:
    """(fused scores, fused logits), both (R, K), over every valid candidate with the batch path.

    The fused score is a weighted sum of task probabilities in [0, sum of weights]; divided by
    that sum it is a probability-like number whose logit is the soft label's target."""
    rows, cols = np.nonzero(requests.valid)
    probabilities = scorer.label(
        requests.user_ids[rows], requests.item_ids[rows, cols], requests.ts[rows], interactions
    )
    fused = scorer.fuse(probabilities)
    share = np.clip(fused / float(scorer.fusion_weights.sum()), 1e-6, 1 - 1e-6)
    scores = np.zeros(requests.valid.shape, dtype=np.float32)
    logits = np.zeros(requests.valid.shape, dtype=np.float32)
    scores[rows, cols] = fused
    logits[rows, cols] = np.log(share / (1 - share))
    return scores, logits


def build_requests(
    scorer: RankScorer,
    merger: Merger,
    history_log: Table,
    outcome_log: Table,
    user_ids: np.ndarray,
    ts: np.ndarray,
    n_items: int,
    count: int,
    keep: int = 0,
    seed: int = 0,
) -> Requests:
    """Requests at (user, ts): history and consumed items from `history_log` strictly before ts,
    recall's `count` candidates, labels = played in `outcome_log` at or after ts. With `keep`,
    each request keeps every positive plus a seeded random sample of the rest, `keep` in all
    (bounds the teacher's labelling and training cost)."""
    history = history_before(history_log, user_ids, ts, scorer.store.spec.history_length)
    consumed = consumed_before(history_log, user_ids, ts)
    item_ids, valid = recall_candidates(merger, user_ids, ts, history, consumed, count)
    labels = _played_after(outcome_log, user_ids, ts, item_ids, n_items) & valid
    if keep and keep < count:
        item_ids, valid, labels = _subsample(item_ids, valid, labels, keep, seed)
    empty = np.zeros(item_ids.shape, dtype=np.float32)
    requests = Requests(
        user_ids, ts, history, item_ids, valid, labels.astype(np.float32), empty, empty.copy()
    )
    requests.teacher_scores, requests.teacher_logits = teacher_labels(scorer, requests, history_log)
    return requests


def _played_after(
    log: Table, user_ids: np.ndarray, ts: np.ndarray, item_ids: np.ndarray, n_items: int
) -> np.ndarray:
    """(R, K) True where the request's user played the candidate in `log` at or after ts."""
    request_ts = np.full(int(max(log["user_id"].max(initial=0), user_ids.max(initial=0))) + 1, -1)
    request_ts[user_ids] = ts  # one request per user in every caller
    played = (
        log["play"] & (log["ts"] >= request_ts[log["user_id"]]) & (request_ts[log["user_id"]] >= 0)
    )
    keys = np.unique(log["user_id"][played].astype(np.int64) * n_items + log["item_id"][played])
    wanted = user_ids[:, None].astype(np.int64) * n_items + item_ids
    position = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
    return (keys[position] == wanted) if len(keys) else np.zeros(wanted.shape, dtype=bool)


def _subsample(item_ids, valid, labels, keep: int, seed: int):
    """Every positive first, then random others, `keep` per request (order within: recall's)."""
    rng = np.random.default_rng(seed)
    noise = rng.random(item_ids.shape)
    priority = np.where(labels, 2.0, np.where(valid, noise, -1.0))  # positives, others, padding
    chosen = np.sort(np.argsort(-priority, axis=1, kind="stable")[:, :keep], axis=1)
    take = lambda a: np.take_along_axis(a, chosen, axis=1)  # noqa: E731
    return take(item_ids), take(valid), take(labels)
