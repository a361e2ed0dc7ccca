"""The ranker's fine-tune from what the stack served: the published ranker trained further on
served impressions with their outcomes (plus a seeded replay of logged training impressions
against forgetting), every row's context fields as serving computed them, and a publish gate that
ships the new ranker only when its logloss on the latest served impressions is not worse. The
daily retrain (training/retrain.py) calls `fine_tune`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade.artifacts import Bundle, BundleWriter
from cascade.context_fields import MFPositions
from cascade.data.schema import DataError, Dataset, Table
from cascade.data.split import TemporalSplit, concat_by_time, per_user_temporal, take
from cascade.features import FeatureSpec
from cascade.rows import OfflineRows
from services.rank.export import load_torch
from services.rank.export import write_component as write_rank
from services.rank.model import ModelConfig
from services.rank.train import Prepared, TrainConfig, evaluate, fit, predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneConfig:
    seed: int = 0
    epochs: int = 3  # at most; early stopping on the held-out last served impressions
    learning_rate: float = 1e-3  # below a fresh run's (2e-3): a warm start moves gently
    replay_per_served: float = 2.0  # logged training impressions replayed per served one
    validation_fraction: float = 0.1  # each user's latest served impressions, for early stopping
    # The publish gate's slice: this share of the served impressions, the latest by request time
    # (the last hours of the log), held out of fine-tuning and early stopping.
    gate_fraction: float = 0.2
    gate_tolerance: float = 0.0  # relative logloss rise the gate still accepts (0: not worse)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.replay_per_served < 0:
            raise ValueError("epochs >= 1 and replay_per_served >= 0")
        if not 0 < self.validation_fraction < 1:
            raise ValueError("validation_fraction in (0, 1)")
        if not 0 < self.gate_fraction < 1 or self.gate_tolerance < 0:
            raise ValueError("gate_fraction in (0, 1) and gate_tolerance >= 0")


class FineTuneError(DataError):
    """The served impressions cannot fine-tune the ranker (the message says why)."""


def fine_tune(
    artifacts: Path,
    version: str,
    previous: Bundle,
    dataset: Dataset,
    split: TemporalSplit,
    served: Table,
    plays: Table,
    config: FineTuneConfig,
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
        raise FineTuneError(
            "every served impression is at the log's latest time: nothing is left to fine-tune "
            "on beside the publish gate's slice"
        )
    logged = split.train_impressions
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
    examples, order = concat_by_time({k: served[k] for k in columns}, replay)
    # Early stopping on the latest served impressions only: the distribution being served.
    is_served = np.r_[np.ones(len(served["ts"]), bool), np.zeros(n_replay, bool)][order]
    held = per_user_temporal(examples, config.validation_fraction) & is_served
    # mf_position from the served bundle's MF model, as the ranker read it when it served these
    # pages. Without it (this job's first version) every row had it unknown and the new bundle
    # was written without the MF flag: the fine-tuned ranker lost its strongest input.
    offline = served_rows(previous, dataset, split, spec, plays, mf_feature)
    train, validation = take(examples, ~held), take(examples, held)
    if not len(validation["ts"]):
        validation = train
    validation_rows = offline.impressions(validation)
    prepared = Prepared(
        dataset,
        spec,
        split,
        offline,
        (offline.impressions(train), train),
        (validation_rows, validation),
        (validation_rows, validation),
    )
    train_config = TrainConfig(
        seed=config.seed,
        learning_rate=config.learning_rate,
        max_epochs=config.epochs,
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
            dataset.name,
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
    previous: Bundle,
    dataset: Dataset,
    split: TemporalSplit,
    spec: FeatureSpec,
    plays: Table,
    mf_feature: bool,
) -> OfflineRows:
    """Rank rows for logged requests as the served bundle computed them: history, counters and
    consumed sets from `plays` strictly before each request, item ages on serving's data clock
    (the end of the training log its store holds) and mf_position from its MF model."""
    mf = MFPositions.from_bundle(previous) if mf_feature else None
    as_of = int(np.max(split.train_interactions["ts"], initial=0))
    return OfflineRows(dataset, spec, plays, mf, as_of)


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


def _mean_logloss(metrics: dict) -> float:
    return round(float(np.mean([m["logloss"] for m in metrics.values()])), 5)


def _mean_auc(metrics: dict) -> float | None:
    """Mean AUC over the tasks that have both classes (None when none has)."""
    values = [m["AUC"] for m in metrics.values() if m["AUC"] is not None]
    return round(float(np.mean(values)), 5) if values else None
