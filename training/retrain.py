"""Continuous training: what the stack served and heard (its event log) becomes a new bundle that
the running stack hot-reloads.

One job (`retrain`, run by `cascade simulate` after each simulated day and by
`cascade train all --event-log URL`) reads the log, folds it into the training data
(training/fold.py) and publishes a new version on top of the published one. It reads only the
log's records after the published bundle's recorded position and the records that bundle holds
(cascade/eventlog_increment.py); the new bundle records its own:

- rank: fine-tuned from the published weights (warm start) on the served impressions with their
  outcomes, plus a seeded replay sample of the logged training impressions against forgetting;
  every row's context fields as serving computed them (the served bundle's MF model for
  mf_position, the page's recall channel tags). A publish gate then scores the served ranker and
  the fine-tuned one on the latest served impressions, which the fine-tune never saw (their
  observed outcomes, never the world's truth): the new ranker ships only when its logloss is not
  worse, else the served one is carried over, and the report says why (rank's own public
  `fine_tune`, services/rank/fine_tune.py);
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from cascade.artifacts import Bundle, BundleWriter, clone, publish
from cascade.backends import open_event_log
from cascade.catalog_fold import save_uploads, with_uploads
from cascade.data.schema import DataError, Dataset, Table
from cascade.data.split import TemporalSplit, concat_by_time, split_dataset, take
from cascade.eventlog_increment import read_log_since, save_log
from services.rank.fine_tune import FineTuneConfig, fine_tune
from training.fold import heard_interactions, served_impressions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainConfig:
    seed: int = 0
    # The ranker's fine-tune and publish gate (services/rank/fine_tune.py); its seed is this one.
    rank: FineTuneConfig = field(default_factory=FineTuneConfig)
    prerank_users: int = 300  # distillation requests (a full `cascade train prerank`: 3,000)
    prerank_epochs: int = 5
    recall_tables: bool = True  # rebuild recall's tables and MF channel from the plays

    def __post_init__(self) -> None:
        if self.prerank_epochs < 0 or self.prerank_users < 0:
            raise ValueError("prerank_epochs >= 0 and prerank_users >= 0")
        object.__setattr__(self, "rank", replace(self.rank, seed=self.seed))


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
    plays, _ = concat_by_time(base.split.train_interactions, heard)
    report: dict = {"version": version, "served_impressions": len(served["item_id"])}
    report["plays_heard"] = len(plays["item_id"]) - len(base.split.train_interactions["item_id"])
    report["rank"] = fine_tune(
        artifacts, version, previous, base.dataset, base.split, served, plays, config.rank
    )
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
    from training.prerank_train import distill_into_bundle

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
