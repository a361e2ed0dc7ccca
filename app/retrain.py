"""Continuous training: what the stack served and heard (its event log) becomes a new bundle that
the running stack hot-reloads.

One job (`retrain`, run by `cascade simulate` after each simulated day and by
`cascade train all --event-log URL`) reads the log, folds it into the training data
(app/fold.py) and publishes a new version on top of the published one:

- rank: fine-tuned from the published weights (warm start) on every served impression with its
  outcome, plus a seeded replay sample of the logged training impressions against forgetting;
- pre-rank: distilled again from that ranker (warm-started from the published student, on a
  smaller request sample than a full `cascade train prerank`);
- recall: channel tables (co-occurrence, trending, fresh, profile, social) and the MF channel
  rebuilt from the training plays plus every play heard online; the two-tower model and the
  reranker are carried over unchanged (hard links).

Each stage is trained through its own public functions, so a stage's new features reach this job.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from app.catalog_fold import read_uploads, with_uploads
from app.fold import heard_interactions, served_impressions
from cascade.artifacts import Bundle, BundleWriter, clone, publish
from cascade.backends import open_event_log
from cascade.data.schema import DataError, Dataset, Table
from cascade.data.split import TemporalSplit, per_user_temporal, split_dataset, take
from cascade.features import FeatureSpec
from services.rank.export import load_torch
from services.rank.export import write_component as write_rank
from services.rank.model import ModelConfig
from services.rank.rows import OfflineRows
from services.rank.train import Prepared, TrainConfig, evaluate, fit, predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainConfig:
    seed: int = 0
    rank_epochs: int = 3  # at most; early stopping on the held-out last served impressions
    rank_learning_rate: float = 1e-3  # below a fresh run's (2e-3): a warm start moves gently
    replay_per_served: float = 2.0  # logged training impressions replayed per served one
    validation_fraction: float = 0.1  # each user's latest served impressions, for early stopping
    prerank_users: int = 300  # distillation requests (a full `cascade train prerank`: 3,000)
    prerank_epochs: int = 5
    recall_tables: bool = True  # rebuild recall's tables and MF channel from the plays

    def __post_init__(self) -> None:
        if self.rank_epochs < 1 or self.prerank_epochs < 0 or self.prerank_users < 0:
            raise ValueError("rank_epochs >= 1, prerank_epochs >= 0 and prerank_users >= 0")
        if self.replay_per_served < 0 or not 0 < self.validation_fraction < 1:
            raise ValueError("replay_per_served >= 0 and validation_fraction in (0, 1)")


class RetrainError(DataError):
    """The log has nothing to learn from, or the bundle cannot be fine-tuned."""


def read_log(url: str) -> tuple[pa.Table, pa.Table]:
    """(events, impressions) of an event log, read beside a running writer."""
    event_log = open_event_log(url, read_only=True)
    try:
        return event_log.read_events(), event_log.read_impressions()
    finally:
        event_log.close()


@dataclass
class Base:
    """The dataset the published bundle was trained on and its split, loaded once per run."""

    dataset: Dataset
    split: TemporalSplit

    @classmethod
    def of(cls, dataset: Dataset) -> Base:
        return cls(dataset, split_dataset(dataset))


def retrain(
    artifacts: Path,
    base: Base,
    events: pa.Table,
    impressions: pa.Table,
    version: str,
    config: RetrainConfig | None = None,
    data_dir: Path = Path("data"),
    publish_it: bool = True,
    source: str = "current",
    uploads: pa.Table | None = None,
) -> dict:
    """Builds bundle `version` from bundle `source` and the log; returns what each stage did.
    `uploads`: the log's uploaded items, folded into the catalogue it trains on."""
    config = config or RetrainConfig()
    started = time.perf_counter()
    base = Base(with_uploads(base.dataset, uploads), base.split)
    served = served_impressions(events, impressions)
    served = take(served, served["user_id"] > 0)  # anonymous pages teach no user anything
    # Items outside the catalogue it trains on (uploads not given in `uploads`) teach nothing.
    served = take(served, served["item_id"] < base.dataset.n_items)
    if not len(served["item_id"]):
        raise RetrainError("the event log holds no served impressions: nothing to train on")
    previous = Bundle.open(artifacts, source)
    clone(artifacts, source, version)  # every component, hard-linked; stages below replace theirs
    heard = heard_interactions(events)
    heard = take(heard, heard["item_id"] < base.dataset.n_items)
    plays, _ = _concat(base.split.train_interactions, heard)
    report: dict = {"version": version, "served_impressions": len(served["item_id"])}
    report["plays_heard"] = len(plays["item_id"]) - len(base.split.train_interactions["item_id"])
    report["rank"] = fine_tune_rank(artifacts, version, previous, base, served, plays, config)
    if config.recall_tables:
        report["recall"] = refresh_recall(artifacts, version, previous, base.dataset, plays)
    if config.prerank_epochs and "prerank" in previous.manifest["components"]:
        report["prerank"] = distill_prerank(artifacts, version, previous, base, data_dir, config)
    if publish_it:
        publish(artifacts, version)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def fine_tune_rank(
    artifacts: Path,
    version: str,
    previous: Bundle,
    base: Base,
    served: Table,
    plays: Table,
    config: RetrainConfig,
) -> dict:
    """The published ranker, trained further on served impressions (+ replayed logged ones);
    history for every row from the plays strictly before it, online plays included."""
    model = load_torch(previous)
    meta = previous.load_json("rank", "rank.json")
    spec = FeatureSpec.from_json(previous.file("rank", "feature_spec.json").read_text())
    model_config = ModelConfig(**meta["config"]["model"])
    tasks = tuple(meta["tasks"])
    logged = base.split.train_impressions
    n_replay = min(int(config.replay_per_served * len(served["item_id"])), len(logged["ts"]))
    pick = np.random.default_rng([config.seed, len(served["item_id"])]).choice(
        len(logged["ts"]), n_replay, replace=False
    )
    columns = ("user_id", "item_id", "ts", *tasks)
    examples, order = _concat(
        {k: served[k] for k in columns}, {k: logged[k][pick] for k in columns}
    )
    # Early stopping on the latest served impressions only: the distribution being served.
    is_served = np.r_[np.ones(len(served["ts"]), bool), np.zeros(n_replay, bool)][order]
    held = per_user_temporal(examples, config.validation_fraction) & is_served
    offline = OfflineRows(base.dataset, spec, plays)
    train, validation = take(examples, ~held), take(examples, held)
    if not len(validation["ts"]):
        validation = train
    prepared = Prepared(
        base.dataset,
        spec,
        base.split,
        offline,
        (offline.impressions(train), train),
        (offline.impressions(validation), validation),
        (offline.impressions(validation), validation),
    )
    train_config = TrainConfig(
        seed=config.seed,
        learning_rate=config.rank_learning_rate,
        max_epochs=config.rank_epochs,
        patience=0,
        tasks=tasks,
        fusion=dict(meta["fusion_weights"]),
    )
    before = evaluate(predict(model, prepared.validation[0], spec), validation, tasks)
    model, info = fit(prepared, tasks, model_config, train_config, model=model)
    info["test"] = evaluate(predict(model, prepared.validation[0], spec), validation, tasks)
    info["warm_start"] = previous.component("rank")["version"]
    writer = BundleWriter(artifacts, version)
    sample = {k: v[:64] for k, v in prepared.train[0].items()}
    write_rank(writer, model, spec, base.dataset.name, train_config, model_config, info, sample)
    writer.commit()
    return {
        "train_rows": info["train_rows"],
        "served_rows": int(is_served.sum()),
        "epochs": len(info["epochs"]),
        "validation_logloss_before": _mean_logloss(before),
        "validation_logloss_after": _mean_logloss(info["test"]),
        "seconds": info["seconds"],
    }


def refresh_recall(
    artifacts: Path, version: str, previous: Bundle, dataset: Dataset, plays: Table
) -> dict:
    """Recall's tables and MF channel from `plays`; the two-tower files stay as published."""
    from services.recall.train import build_recall

    started = time.perf_counter()
    spec = FeatureSpec.from_json(previous.component("recall")["feature_spec"])
    writer = BundleWriter(artifacts, version)
    old = previous.component("recall")
    info = build_recall(dataset, plays, writer, spec, two_tower=False, progress=False)
    if "two_tower" in old:  # carried over: its files came with the clone
        writer.manifest["components"]["recall"]["two_tower"] = old["two_tower"]
        writer.commit()
    return {"as_of": info["as_of"], "seconds": round(time.perf_counter() - started, 1)}


def distill_prerank(
    artifacts: Path,
    version: str,
    previous: Bundle,
    base: Base,
    data_dir: Path,
    config: RetrainConfig,
) -> dict:
    """A student distilled from the new ranker, warm-started from the published one."""
    from services.prerank.distill import DEFAULT_VARIANT, DistillConfig, variant_config
    from services.prerank.train import distill_into_bundle

    started = time.perf_counter()
    distill = variant_config(
        DEFAULT_VARIANT,
        DistillConfig(
            seed=config.seed, max_users=config.prerank_users, epochs=config.prerank_epochs
        ),
    )
    warm_start = previous.load_npz("prerank", "weights.npz")
    _, info = distill_into_bundle(
        base.dataset, data_dir, artifacts, version, distill, warm_start=warm_start
    )
    return {"requests": info["requests"], "seconds": round(time.perf_counter() - started, 1)}


def retrain_from_log(
    artifacts: Path,
    dataset: Dataset,
    event_log: str,
    version: str,
    data_dir: Path,
    publish_it: bool = True,
    config: RetrainConfig | None = None,
) -> dict:
    """`cascade train all --event-log URL`: one job over the whole log."""
    events, impressions = read_log(event_log)
    return retrain(
        artifacts,
        Base.of(dataset),
        events,
        impressions,
        version,
        config,
        data_dir,
        publish_it,
        uploads=read_uploads(event_log),
    )


def _mean_logloss(metrics: dict) -> float:
    return round(float(np.mean([m["logloss"] for m in metrics.values()])), 5)


def _concat(first: Table, second: Table) -> tuple[Table, np.ndarray]:
    """The two tables (same columns) as one, time-ordered, and the order applied (row i of the
    result is row order[i] of first-then-second)."""
    joined = {c: np.concatenate([first[c], second[c].astype(first[c].dtype)]) for c in first}
    order = np.argsort(joined["ts"], kind="stable")
    return {c: v[order] for c, v in joined.items()}, order
