"""Fitting the ranker on prepared rows: the configuration, early-stopped training, prediction,
per-task metrics, fusion tuning and the written component.

The rows come from the training layer (training/rank_train.py: split, examples, encoding), which
is also the command (`cascade train rank`). Deterministic for a seed (one torch thread).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeAlias, overload

import numpy as np
import torch

from cascade import distributed, metrics
from cascade.artifacts import BundleWriter
from cascade.data.schema import Dataset, Table
from cascade.data.split import TemporalSplit
from cascade.embeddings import Adam
from cascade.features import FeatureSpec
from cascade.progress import Progress
from cascade.rows import OfflineRows, Rows, input_names
from services.rank.cold_start import ItemIdDropout, learn_unknown_rows
from services.rank.debias import ips_weights, known_examination, position_ids
from services.rank.export import write_component
from services.rank.fusion import tune_fusion
from services.rank.model import ModelConfig, RankModel

if TYPE_CHECKING:
    from services.rank.baseline import LogisticRegression

# What fit trains and predict scores: the ranker, or the baseline with the same logits.
Ranker: TypeAlias = "RankModel | LogisticRegression"

log = logging.getLogger(__name__)

EXAMPLES = ("impressions", "recall", "both")
DEFAULT_FUSION = {"click": 1.0, "play": 1.0, "complete": 1.0, "like": 2.0, "share": 3.0}


@dataclass(frozen=True)
class RecallExamples:
    """Recall's candidates at training-period requests as examples (training/rank_examples.py)."""

    requests_per_user: int = 4  # at 1/(n+1) .. n/(n+1) of each user's training history
    # The recall asked: the profile's channel quotas and switches at its gateway's recall count
    # (training/served_recall.py), so the ranker learns from what the funnel retrieves.
    profile: str = "default"  # a profile name or file (deploy/profiles)
    candidates: int = 0  # recall's candidates per request; 0 = the profile's recall count
    keep: int = 40  # per request: every positive plus seeded random others, this many in all
    min_history: int = 5  # users with fewer training interactions make no request
    max_requests: int = 20_000  # seeded sample above this
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    max_epochs: int = 8
    patience: int = 1  # epochs without a better validation logloss before stopping
    validation_fraction: float = 0.1
    max_train_rows: int = 400_000  # subsampled with the seed above this (synthetic: ~3.2M)
    max_test_rows: int = 400_000
    tasks: tuple[str, ...] | None = None  # None = every task the dataset has
    fusion: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FUSION))
    # "impressions": logged impressions (+ the source's negatives); "recall": recall's candidates
    # at training-period requests, labelled by what followed (needs the bundle's recall
    # component); "both": the two tables together.
    examples: str = "impressions"
    recall_examples: RecallExamples = field(default_factory=RecallExamples)
    # Training rows' mf_position from MF models fitted without the row's user, in this many user
    # folds (cascade/context_fields.FoldedMF); 0 = the bundle's own model, which has seen the
    # training period's future but ordered EASE's top 100 better on ml-100k (docs/stages.md, Rank).
    mf_folds: int = 0
    # Scales of the non-primary tasks' fusion weights tried on the validation slice (the primary
    # task, the first, keeps weight 1); the one with the best primary-task GAUC is served. () =
    # serve `fusion` as given.
    fusion_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    # Inverse propensity weighting of positive labels by the world's known examination
    # probability of their slot (services/rank/debias.py; the synthetic world only).
    ips: bool = False
    # Cold start (services/rank/cold_start.py): this seeded share of each batch's rows is shown
    # with its item id and MF position unknown (row 0, as serving sees an upload), so row 0
    # learns to score an unseen item from its metadata. 0 = off.
    item_id_dropout: float = 0.0
    threads: int = 1  # torch threads per worker (one: deterministic for a seed)

    def __post_init__(self) -> None:
        if self.examples not in EXAMPLES:
            raise ValueError(f"examples must be one of {EXAMPLES}, got {self.examples!r}")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ValueError(f"item_id_dropout must be in [0, 1), got {self.item_id_dropout}")


@dataclass
class Prepared:
    """A dataset's split and encoded rows, shared by every model trained on it (ablations)."""

    dataset: Dataset
    spec: FeatureSpec
    split: TemporalSplit
    offline: OfflineRows
    train: tuple[Rows, Table]  # rows, impressions (labels and users)
    validation: tuple[Rows, Table]
    test: tuple[Rows, Table]


def labels(impressions: Table, tasks: tuple[str, ...]) -> np.ndarray:
    return np.stack([impressions[t] for t in tasks], axis=1).astype(np.float32)  # (n, T)


def _tensors(rows: Rows, spec: FeatureSpec) -> list[torch.Tensor]:
    return [torch.from_numpy(rows[name]) for name in input_names(spec)]


@torch.no_grad()
def predict(
    model: Ranker,
    rows: Rows,
    spec: FeatureSpec,
    batch: int = 8192,
    positions: torch.Tensor | None = None,
) -> np.ndarray:
    """(n, n_tasks) probabilities in eval mode: the served score, or with `positions` (the
    position tower's ids) the training objective's."""
    model.eval()
    inputs = _tensors(rows, spec)
    n = len(inputs[0])
    out = [
        model(*(x[s : s + batch] for x in inputs))
        if positions is None
        else torch.sigmoid(
            training_logits(model, [x[s : s + batch] for x in inputs], positions[s : s + batch])
        )
        for s in range(0, n, batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.tasks)), np.float32)


def training_logits(
    model: Ranker, inputs: list[torch.Tensor], positions: torch.Tensor | None
) -> torch.Tensor:
    """The logits training fits: the served ones plus, with a position tower, the shown slot's
    logit (PAL: the tower explains the slot so the served logits need not)."""
    logits = model.logits(*inputs)
    if positions is None:
        return logits
    if not isinstance(model, RankModel) or model.position_tower is None:
        raise ValueError("slot positions given for a model without a position tower")
    return logits + model.position_tower(positions)


def tower_positions(model: Ranker, impressions: Table) -> torch.Tensor | None:
    """The position tower's input for `impressions` (None when the model has no tower); a
    table without a position column has every slot unknown."""
    if not isinstance(model, RankModel) or model.position_tower is None:
        return None
    n = len(impressions["ts"])
    position = impressions.get("position", np.full(n, -1))
    return torch.from_numpy(position_ids(position, model.config.position_slots))


def loss_weights(
    config: TrainConfig, dataset: Dataset, impressions: Table, targets: np.ndarray
) -> torch.Tensor | None:
    """IPS weights of the training rows' labels (None unless config.ips)."""
    if not config.ips:
        return None
    n = len(impressions["ts"])
    position = impressions.get("position", np.full(n, -1))
    return torch.from_numpy(ips_weights(targets, position, known_examination(dataset)))


def evaluate(probabilities: np.ndarray, impressions: Table, tasks: tuple[str, ...]) -> dict:
    """AUC, GAUC and logloss per task (None where a task has a single class in `impressions`)."""
    result = {}
    for i, task in enumerate(tasks):
        y, p = impressions[task], probabilities[:, i]
        single = y.all() or not y.any()
        result[task] = {
            "AUC": None if single else metrics.auc(y, p),
            "GAUC": None if single else _gauc(impressions["user_id"], y, p),
            "logloss": metrics.logloss(y, p),
            "positive_rate": float(y.mean()),
        }
    return result


def _gauc(users: np.ndarray, y: np.ndarray, p: np.ndarray) -> float | None:
    """GAUC, None when no user has both labels (a small slice of served impressions, where
    every user's shares are 0, leaves it undefined)."""
    try:
        return metrics.gauc(users, y, p)
    except ValueError:
        return None


class TrainingLogits(torch.nn.Module):
    """`training_logits` as a module's forward, so DistributedDataParallel (which syncs the
    gradients of what its forward computed) can wrap it."""

    def __init__(self, model: Ranker):
        super().__init__()
        self.model = model

    def forward(self, inputs: list[torch.Tensor], positions: torch.Tensor | None) -> torch.Tensor:
        return training_logits(self.model, inputs, positions)


def validation_logloss(
    model: Ranker,
    rows: Rows,
    spec: FeatureSpec,
    targets: np.ndarray,
    positions: torch.Tensor | None,
) -> float:
    """Mean over tasks of the training objective's logloss on the validation slice; with
    several workers each scores its part and the sums are added."""
    n_tasks = targets.shape[1]
    if distributed.world_size() == 1:
        p = predict(model, rows, spec, positions=positions)
        return float(np.mean([metrics.logloss(targets[:, i], p[:, i]) for i in range(n_tasks)]))
    mine = np.array_split(np.arange(len(targets)), distributed.world_size())[distributed.rank()]
    part = {k: v[mine] for k, v in rows.items()}
    p = predict(model, part, spec, positions=None if positions is None else positions[mine])
    sums = [
        metrics.logloss(targets[mine, i], p[:, i]) * len(mine) if len(mine) else 0.0
        for i in range(n_tasks)
    ]
    total = distributed.sum_values(np.array([*sums, len(mine)]))
    return float(np.mean(total[:n_tasks] / total[n_tasks]))


def train_step(
    objective: torch.nn.Module,
    optimizer: Adam,
    inputs: list[torch.Tensor],
    targets: torch.Tensor,
    positions: torch.Tensor | None,
    weights: torch.Tensor | None,
) -> float:
    """One optimizer step on a batch (this worker's part of it); returns the batch's loss.
    `objective`: TrainingLogits, or DistributedDataParallel over it (gradients averaged)."""
    logits = objective(inputs, positions)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@overload
def fit(
    prepared: Prepared,
    tasks: tuple[str, ...],
    model_config: ModelConfig,
    config: TrainConfig,
    model: RankModel | None = None,
) -> tuple[RankModel, dict]: ...
@overload
def fit(
    prepared: Prepared,
    tasks: tuple[str, ...],
    model_config: ModelConfig,
    config: TrainConfig,
    model: LogisticRegression,
) -> tuple[LogisticRegression, dict]: ...
def fit(
    prepared: Prepared,
    tasks: tuple[str, ...],
    model_config: ModelConfig,
    config: TrainConfig,
    model: Ranker | None = None,
) -> tuple[Ranker, dict]:
    """Trains with Adam and early stopping on the validation logloss; returns the best model.
    `model` replaces the RankModel built from model_config (baselines with `logits`).
    Under torchrun each worker fits on its shard of the rows, in batches of batch_size / workers,
    with gradients averaged across workers (DistributedDataParallel)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    spec = prepared.spec
    if model is None:
        model = RankModel(spec, tasks, model_config)
    optimizer = Adam(model, lr=config.learning_rate, weight_decay=config.weight_decay)
    inputs = _tensors(prepared.train[0], spec)
    targets = torch.from_numpy(labels(prepared.train[1], tasks))
    positions = tower_positions(model, prepared.train[1])
    weights = loss_weights(config, prepared.dataset, prepared.train[1], targets.numpy())
    if distributed.world_size() > 1:  # this worker's shard of the rows
        mine = torch.from_numpy(distributed.shard(len(targets), config.seed))
        inputs, targets = [x[mine] for x in inputs], targets[mine]
        positions = None if positions is None else positions[mine]
        weights = None if weights is None else weights[mine]
    batch_size = distributed.local_batch(config.batch_size)
    dropout = ItemIdDropout(input_names(spec), config.item_id_dropout, config.seed)
    if config.item_id_dropout:
        learn_unknown_rows(model)
    val_rows, val_impressions = prepared.validation
    val_labels = labels(val_impressions, tasks)
    val_positions = tower_positions(model, val_impressions)
    objective = distributed.wrap(TrainingLogits(model))
    generator = torch.Generator().manual_seed(config.seed)
    best, best_loss, stale, history = None, np.inf, 0, []
    started, clock, seen = time.perf_counter(), distributed.LoopClock(), 0
    batches = -(
        -len(targets) // batch_size
    )  # per epoch, this worker's; early stopping may end sooner
    bar = Progress("train rank", config.max_epochs * batches, "batches")
    for epoch in range(config.max_epochs):
        model.train()
        order = torch.randperm(len(targets), generator=generator)
        with clock.epoch():
            for s in range(0, len(order), batch_size):
                batch = order[s : s + batch_size]
                train_step(
                    objective,
                    optimizer,
                    dropout([x[batch] for x in inputs]),
                    targets[batch],
                    None if positions is None else positions[batch],
                    None if weights is None else weights[batch],
                )
                bar.update()
        seen += len(order) * distributed.world_size()
        val_loss = validation_logloss(model, val_rows, spec, val_labels, val_positions)
        history.append({"epoch": epoch + 1, "validation_logloss": val_loss})
        log.info("epoch %d: validation logloss %.5f", epoch + 1, val_loss)
        bar.note(epoch=epoch + 1, validation_logloss=round(val_loss, 5))
        if val_loss < best_loss - 1e-5:
            best, best_loss, stale = copy.deepcopy(model.state_dict()), val_loss, 0
        else:
            stale += 1
            if stale > config.patience:
                break
    bar.close()
    if best is None:
        raise ValueError(f"no epoch gave a finite validation logloss ({history})")
    model.load_state_dict(best)
    model.eval()
    info = {
        "epochs": history,
        "best_validation_logloss": best_loss,
        "train_rows": len(targets) * distributed.world_size(),
        "validation_rows": len(val_labels),
        "seconds": round(time.perf_counter() - started, 1),
        "workers": distributed.world_size(),
        **clock.report(seen),
    }
    return model, info


def train_prepared(
    prepared: Prepared, config: TrainConfig, model_config: ModelConfig
) -> tuple[RankModel, dict]:
    """Fits the full model on prepared rows (several models on one preparation: ablations); its
    info includes test-period metrics per task and the fusion tuned on the validation slice."""
    tasks = tuple(config.tasks or prepared.dataset.meta["tasks"])
    model, info = fit(prepared, tasks, model_config, config)
    if not distributed.is_writer():  # worker 0 evaluates, tunes and writes
        return model, info
    test_rows, test_impressions = prepared.test
    info["test"] = evaluate(predict(model, test_rows, prepared.spec), test_impressions, tasks)
    info["test_rows"] = len(test_impressions["ts"])
    info["context"] = context_info(prepared, config, model_config)
    if config.fusion_scales:
        val_rows, val_impressions = prepared.validation
        probabilities = predict(model, val_rows, prepared.spec)
        fusion, tried = tune_fusion(
            probabilities, val_impressions, tasks, config.fusion, config.fusion_scales
        )
        info["fusion"], info["fusion_tuning"] = fusion, tried
        log.info("fusion tuned on the validation slice: %s (%s)", fusion, tried)
    return model, info


def write_trained(
    artifacts,
    version: str | None,
    model: RankModel,
    prepared: Prepared,
    config: TrainConfig,
    model_config: ModelConfig,
    info: dict,
) -> BundleWriter:
    """The rank component of bundle `version` (created, or added to), with the tuned fusion."""
    writer = BundleWriter(artifacts, version)
    sample = {k: v[:64] for k, v in prepared.test[0].items()}
    served = replace(config, fusion=info.get("fusion", config.fusion))  # tuned, when it was
    write_component(
        writer,
        model,
        prepared.spec,
        prepared.dataset.name,
        served,
        model_config,
        info,
        sample,
        **info["context"],
    )
    writer.commit()
    return writer


def context_info(prepared: Prepared, config: TrainConfig, model_config: ModelConfig) -> dict:
    """Which context fields the model learnt from: serving fills exactly these (rank.json)."""
    chosen = model_config.context_fields
    reads = lambda name: chosen is None or name in chosen  # noqa: E731
    return {
        "mf_feature": reads("mf_position") and prepared.offline.context.mf is not None,
        "channel_feature": (reads("channels") or reads("channel_position"))
        and config.examples != "impressions",
    }
