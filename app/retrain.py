"""Continuous training: what the stack served and heard (its event log) becomes a new bundle that
the running stack hot-reloads.

One job (`retrain`, run by `cascade simulate` after each simulated day and by
`cascade train all --event-log URL`) reads the log, folds it into the training data
(app/fold.py) and publishes a new version on top of the published one. It reads only the log's
records after the published bundle's recorded position and the records that bundle holds
(cascade/eventlog_increment.py); the new bundle records its own:

- rank: fine-tuned from the published weights (warm start) on the served impressions with their
  outcomes, plus a seeded replay sample of the logged training impressions against forgetting;
  every row's context fields as serving computed them (the served bundle's MF model for
  mf_position, the page's recall channel tags). A publish gate then scores the served ranker and
  the fine-tuned one on the latest served impressions, which the fine-tune never saw (their
  observed outcomes, never the world's truth): the new ranker ships only when its logloss is not
  worse, else the served one is carried over, and the report says why;
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

from app.fold import heard_interactions, served_impressions
from cascade.artifacts import Bundle, BundleWriter, clone, publish
from cascade.backends import open_event_log
from cascade.catalog_fold import save_uploads, with_uploads
from cascade.data.schema import DataError, Dataset, Table
from cascade.data.split import TemporalSplit, per_user_temporal, split_dataset, take
from cascade.eventlog_increment import read_log_since, save_log
from cascade.features import FeatureSpec
from services.rank.context import MFPositions
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
    # The publish gate's slice: this share of the served impressions, the latest by request time
    # (the last hours of the log), held out of fine-tuning and early stopping.
    gate_fraction: float = 0.2
    gate_tolerance: float = 0.0  # relative logloss rise the gate still accepts (0: not worse)
    prerank_users: int = 300  # distillation requests (a full `cascade train prerank`: 3,000)
    prerank_epochs: int = 5
    recall_tables: bool = True  # rebuild recall's tables and MF channel from the plays

    def __post_init__(self) -> None:
        if self.rank_epochs < 1 or self.prerank_epochs < 0 or self.prerank_users < 0:
            raise ValueError("rank_epochs >= 1, prerank_epochs >= 0 and prerank_users >= 0")
        if self.replay_per_served < 0 or not 0 < self.validation_fraction < 1:
            raise ValueError("replay_per_served >= 0 and validation_fraction in (0, 1)")
        if not 0 < self.gate_fraction < 1 or self.gate_tolerance < 0:
            raise ValueError("gate_fraction in (0, 1) and gate_tolerance >= 0")


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
    log_position: dict | None = None,
) -> dict:
    """Builds bundle `version` from bundle `source` and the log; returns what each stage did.
    `uploads`: the log's uploaded items, folded into the catalogue it trains on.
    `log_position`: where `events`, `impressions` and `uploads` end in the log (the whole log up
    to there); the new bundle holds them and records it, for the next retrain to read on from."""
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
        report["recall"] = refresh_recall(artifacts, version, base.dataset, plays)
    if config.prerank_epochs and "prerank" in previous.manifest["components"]:
        report["prerank"] = distill_prerank(artifacts, version, previous, base, data_dir, config)
    if uploads is not None and uploads.num_rows:
        save_uploads(BundleWriter(artifacts, version), uploads)
    save_log(BundleWriter(artifacts, version), events, impressions, log_position)
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
    """The published ranker, trained further on served impressions (+ replayed logged ones) and
    published only through the gate (`publish_gate`); history for every row from the plays
    strictly before it, online plays included, and the context fields the served ranker read."""
    model = load_torch(previous)
    meta = previous.load_json("rank", "rank.json")
    spec = FeatureSpec.from_json(previous.file("rank", "feature_spec.json").read_text())
    model_config = ModelConfig(**meta["config"]["model"])
    tasks = tuple(meta["tasks"])
    mf_feature, channel_feature = bool(meta.get("mf_feature")), bool(meta.get("channel_feature"))
    in_gate = latest(served["ts"], config.gate_fraction)
    gate, served = take(served, in_gate), take(served, ~in_gate)
    if not len(served["ts"]):
        raise RetrainError(
            "every served impression is at the log's latest time: nothing is left to fine-tune "
            "on beside the publish gate's slice"
        )
    logged = base.split.train_impressions
    n_replay = min(int(config.replay_per_served * len(served["item_id"])), len(logged["ts"]))
    pick = np.random.default_rng([config.seed, len(served["item_id"])]).choice(
        len(logged["ts"]), n_replay, replace=False
    )
    columns = ("user_id", "item_id", "ts", "position", *tasks)  # slot: the ranker's debias
    replay = {k: logged[k][pick] for k in columns}
    if channel_feature:  # the served pages' recall tags; logged impressions have none (as in
        columns += ("channel_mask",)  # `cascade train rank --examples both`)
        replay["channel_mask"] = np.zeros(n_replay, np.uint32)
        served.setdefault("channel_mask", np.zeros(len(served["ts"]), np.uint32))
        gate.setdefault("channel_mask", np.zeros(len(gate["ts"]), np.uint32))
    examples, order = _concat({k: served[k] for k in columns}, replay)
    # Early stopping on the latest served impressions only: the distribution being served.
    is_served = np.r_[np.ones(len(served["ts"]), bool), np.zeros(n_replay, bool)][order]
    held = per_user_temporal(examples, config.validation_fraction) & is_served
    # mf_position from the served bundle's MF model, as the ranker read it when it served these
    # pages. Without it (this job's first version) every row had it unknown and the new bundle
    # was written without the MF flag: the fine-tuned ranker lost its strongest input.
    offline = served_rows(previous, base, spec, plays, mf_feature)
    train, validation = take(examples, ~held), take(examples, held)
    if not len(validation["ts"]):
        validation = train
    validation_rows = offline.impressions(validation)
    prepared = Prepared(
        base.dataset,
        spec,
        base.split,
        offline,
        (offline.impressions(train), train),
        (validation_rows, validation),
        (validation_rows, validation),
    )
    train_config = TrainConfig(
        seed=config.seed,
        learning_rate=config.rank_learning_rate,
        max_epochs=config.rank_epochs,
        patience=0,
        tasks=tasks,
        fusion=dict(meta["fusion_weights"]),
        ips=bool(meta["config"]["train"].get("ips", False)),  # as the published ranker learnt
        item_id_dropout=float(meta["config"]["train"].get("item_id_dropout", 0.0)),
    )
    before = evaluate(predict(model, validation_rows, spec), validation, tasks)
    model, info = fit(prepared, tasks, model_config, train_config, model=model)
    info["test"] = evaluate(predict(model, validation_rows, spec), validation, tasks)
    info["warm_start"] = previous.component("rank")["version"]
    gate_rows = offline.impressions(gate)
    verdict = publish_gate(
        predict(load_torch(previous), gate_rows, spec),
        predict(model, gate_rows, spec),
        gate,
        tasks,
        config.gate_tolerance,
    )
    info["gate"] = verdict
    log.info("rank %s: %s", version, verdict["reason"])
    if verdict["publish"]:
        writer = BundleWriter(artifacts, version)
        sample = {k: v[:64] for k, v in prepared.train[0].items()}
        write_rank(
            writer,
            model,
            spec,
            base.dataset.name,
            train_config,
            model_config,
            info,
            sample,
            mf_feature=mf_feature,
            channel_feature=channel_feature,
        )
        writer.commit()
    return {
        "train_rows": info["train_rows"],
        "served_rows": int(is_served.sum()),
        "epochs": len(info["epochs"]),
        "validation_logloss_before": _mean_logloss(before),
        "validation_logloss_after": _mean_logloss(info["test"]),
        "gate": verdict,
        "seconds": info["seconds"],
    }


def served_rows(
    previous: Bundle, base: Base, spec: FeatureSpec, plays: Table, mf_feature: bool
) -> OfflineRows:
    """Rank rows for logged requests as the served bundle computed them: history, counters and
    consumed sets from `plays` strictly before each request, item ages on serving's data clock
    (the end of the training log its store holds) and mf_position from its MF model."""
    mf = MFPositions.from_bundle(previous) if mf_feature else None
    as_of = int(np.max(base.split.train_interactions["ts"], initial=0))
    return OfflineRows(base.dataset, spec, plays, mf, as_of)


def latest(ts: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the latest `fraction` of rows by time (at least one row; rows at the cut's time
    all go in, so one page never straddles it)."""
    ts = np.asarray(ts)
    if not len(ts):
        return np.zeros(0, bool)
    n = max(1, int(round(fraction * len(ts))))
    return ts >= np.sort(ts)[-n]


def publish_gate(
    served_p: np.ndarray,
    new_p: np.ndarray,
    outcomes: Table,
    tasks: tuple[str, ...],
    tolerance: float = 0.0,
) -> dict:
    """Whether a fine-tuned ranker may replace the served one: both rankers' probabilities for
    the same held-out served impressions, judged on their observed outcomes (what production
    has; never the world's truth). It publishes when the mean logloss over the tasks is at most
    the served ranker's times (1 + tolerance); the AUC of each is reported beside it."""
    rows = len(outcomes["ts"])
    if not rows:
        reason = "publish gate: no held-out served impressions to judge on: refused"
        return {"publish": False, "rows": 0, "reason": reason}
    served_m = evaluate(served_p, outcomes, tasks)
    new_m = evaluate(new_p, outcomes, tasks)
    old, new = _mean_logloss(served_m), _mean_logloss(new_m)
    publish = new <= old * (1 + tolerance)
    reason = (
        f"publish gate on the latest {rows} served impressions: mean logloss {new:.5f} (new) vs "
        f"{old:.5f} (served): "
        + ("published" if publish else "refused, the served ranker is carried over")
    )
    return {
        "publish": publish,
        "rows": rows,
        "served_logloss": old,
        "new_logloss": new,
        "served_auc": _mean_auc(served_m),
        "new_auc": _mean_auc(new_m),
        "reason": reason,
    }


def refresh_recall(artifacts: Path, version: str, dataset: Dataset, plays: Table) -> dict:
    """Recall's tables and MF channel from `plays`, built with the published tables' settings
    (e.g. EASE item-CF neighbours); the two-tower files stay as published."""
    from services.recall.train import refresh_tables

    started = time.perf_counter()
    info = refresh_tables(artifacts, version, dataset, plays, progress=False)
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
    """`cascade train all --event-log URL`: one job over the log up to now, reading only what
    follows the published bundle's position."""
    read = read_log_since(event_log, Bundle.open(artifacts))
    report = retrain(
        artifacts,
        Base.of(dataset),
        read.events,
        read.impressions,
        version,
        config,
        data_dir,
        publish_it,
        uploads=read.uploads,
        log_position=read.position,
    )
    return {**report, "log_rows_read": read.rows_read}


def _mean_logloss(metrics: dict) -> float:
    return round(float(np.mean([m["logloss"] for m in metrics.values()])), 5)


def _mean_auc(metrics: dict) -> float | None:
    """Mean AUC over the tasks that have both classes (None when none has)."""
    values = [m["AUC"] for m in metrics.values() if m["AUC"] is not None]
    return round(float(np.mean(values)), 5) if values else None


def _concat(first: Table, second: Table) -> tuple[Table, np.ndarray]:
    """The two tables (same columns) as one, time-ordered, and the order applied (row i of the
    result is row order[i] of first-then-second)."""
    joined = {c: np.concatenate([first[c], second[c].astype(first[c].dtype)]) for c in first}
    order = np.argsort(joined["ts"], kind="stable")
    return {c: v[order] for c, v in joined.items()}, order
