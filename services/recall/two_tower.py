"""Trains the two-tower retrieval model: in-batch sampled softmax with logQ correction.

Each training interaction is one example: the user's profile and the history strictly before it
(`history_before`, the offline twin of the store) against the consumed item. The other items of
the batch are the negatives, optionally mixed with uniformly drawn catalog items (Yang et al.
2020); logits are corrected by the log of each item's expected count among the negatives (Yi et
al. 2019), so popular items are not pushed down merely for being sampled often. Under torchrun
each worker trains on its shard with batches of batch_size / workers, and the negatives are the
global batch's: every worker's positive item vectors are gathered, with their gradient.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cascade import distributed
from cascade.data.schema import Dataset, Table
from cascade.embeddings import Adam
from cascade.features import FeatureSpec, content_width, encode_by_id, history_before
from cascade.progress import Progress
from services.recall.model import TwoTower, corrected_logits


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 64  # output vector width (the FAISS dimension)
    hidden: int = 256
    temperature: float = 0.05
    logq_correction: bool = True
    mixed_negatives: int = 0  # extra uniformly sampled catalog items per batch
    batch_size: int = 1024
    epochs: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    # Item-id dropout in proportion to rarity: an item with p plays in training has its id
    # embedding replaced by the unknown row with probability id_dropout * k / (k + p), k =
    # id_dropout_plays. The tower learns to score an item from its creator, categories and
    # content when its id says little, so an item nobody played in training (an upload) is
    # served with the unknown id row and scored from what is known at upload; as plays
    # accumulate the id part takes over. 0 turns both off (untrained ids keep their random rows).
    id_dropout: float = 0.5
    id_dropout_plays: float = 10.0
    # The same for items without a content vector (creator and categories alone to fall back
    # on). Off: on ml-100k it lowers Recall@100 of known items (0.4941 -> 0.4659) without
    # ranking held-out items better (`make bench-content-cold-start`).
    id_dropout_without_content: float = 0.0
    seed: int = 0
    threads: int = 1


@dataclass
class TrainingExamples:
    """Model inputs per example, as id-indexed lookups resolved lazily per batch."""

    user_ids: np.ndarray  # (n,)
    item_ids: np.ndarray  # (n,)
    histories: np.ndarray  # (n, history_length)


def make_examples(interactions: Table, history_length: int) -> TrainingExamples:
    users, items = interactions["user_id"], interactions["item_id"]
    histories = history_before(interactions, users, interactions["ts"], history_length)
    return TrainingExamples(users.astype(np.int64), items.astype(np.int64), histories)


def sampling_log_q(
    item_ids: np.ndarray, n_items: int, batch_size: int, mixed_negatives: int
) -> np.ndarray:
    """(n_items,) log of each item's expected count among one batch's negatives.

    In-batch negatives are the batch's positives, drawn ~ training frequency; the mixed ones are
    uniform over the catalog (ids 1..n_items-1). Constants cancel in the softmax, so with no mixed
    negatives this is log frequency up to a shift.
    """
    counts = np.bincount(item_ids, minlength=n_items).astype(np.float64)
    expected = batch_size * counts / counts.sum() + mixed_negatives / max(n_items - 1, 1)
    return np.log(np.maximum(expected, 1e-12)).astype(np.float32)


def catalogue_negatives(rng: np.random.Generator, n_items: int, count: int) -> np.ndarray:
    """`count` items drawn uniformly from the whole catalogue (ids 1..n_items-1, with
    replacement): the entire item space's share of a batch's negatives (mixed negative
    sampling), so items nobody played in the batch are pushed down too."""
    return rng.integers(1, n_items, count)


class Batcher:
    """Turns example rows into the towers' input tensors."""

    def __init__(self, dataset: Dataset, spec: FeatureSpec):
        self.users = encode_by_id(spec, "user", dataset.users, "user_id", dataset.n_users)
        self.items = encode_by_id(spec, "item", dataset.items, "item_id", dataset.n_items)
        self.history_name = spec.of("history")[0].name

    def user_inputs(self, user_ids: np.ndarray, histories: np.ndarray) -> dict[str, torch.Tensor]:
        ids = np.where((user_ids > 0) & (user_ids < len(self.users["user_id"])), user_ids, 0)
        inputs = {name: torch.from_numpy(rows[ids]) for name, rows in self.users.items()}
        inputs[self.history_name] = torch.from_numpy(np.ascontiguousarray(histories))
        return inputs

    def item_inputs(
        self, item_ids: np.ndarray, drop_id: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """The item tower's inputs; where `drop_id` is True the item id is the unknown row."""
        inputs = {name: torch.from_numpy(rows[item_ids]) for name, rows in self.items.items()}
        if drop_id is not None:
            inputs["item_id"] = inputs["item_id"].masked_fill(torch.from_numpy(drop_id), 0)
        return inputs


def id_dropout(spec: FeatureSpec, config: TwoTowerConfig) -> float:
    """The id dropout that applies: `id_dropout` when the items carry content, else
    `id_dropout_without_content`."""
    return config.id_dropout if content_width(spec) else config.id_dropout_without_content


def id_dropout_rates(item_plays: np.ndarray, dropout: float, k: float) -> np.ndarray:
    """(n_items,) probability of training an item without its id: dropout * k / (k + plays)."""
    return (dropout * k / (k + item_plays)).astype(np.float32)


class Towers(torch.nn.Module):
    """Both towers in one forward, so DistributedDataParallel (which syncs the gradients of
    what its forward computed) can wrap the model."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(
        self, user_inputs: dict[str, torch.Tensor], item_inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.user_vector(**user_inputs), self.model.item_vector(**item_inputs)


def batch_loss(
    towers: torch.nn.Module,
    batcher: Batcher,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    histories: np.ndarray,
    negatives: np.ndarray,
    log_q: torch.Tensor | None,
    temperature: float,
    drop_id: np.ndarray | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of each positive against the global batch's items plus
    `negatives` (the same draw on every worker). `towers`: Towers, or DDP over it. With several
    workers the other workers' positives are gathered (vectors with their gradient), so the
    columns, and each row's loss, are those of one process holding the whole global batch.
    `drop_id` (per local column) trains those columns without their item id."""
    b = len(item_ids)
    user_vectors, item_vectors = towers(
        batcher.user_inputs(user_ids, histories),
        batcher.item_inputs(np.concatenate([item_ids, negatives]), drop_id),
    )
    item_vectors = torch.cat([distributed.gather(item_vectors[:b]), item_vectors[b:]])
    columns = np.concatenate([distributed.gather_values(item_ids), negatives])
    column_log_q = None if log_q is None else log_q[torch.from_numpy(columns)]
    logits = corrected_logits(user_vectors, item_vectors, column_log_q, temperature)
    # An item that is another row's positive too is not a negative for this row (accidental hit).
    same = torch.from_numpy(item_ids[:, None] == columns[None, :])
    first = distributed.rank() * b  # this worker's rows among the gathered columns
    own = torch.zeros_like(same)
    own[:, first : first + b] = torch.eye(b, dtype=torch.bool)
    logits = logits.masked_fill(same & ~own, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(first, first + b))


def train_two_tower(
    dataset: Dataset,
    train_interactions: Table,
    spec: FeatureSpec,
    config: TwoTowerConfig,
    progress: bool = True,
) -> TwoTower:
    """Trains on the training-period interactions.

    The model carries `metrics` (the run) and `item_vectors` ((n_items, dim), row = item id).
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    examples = make_examples(train_interactions, spec.history_length)
    batcher = Batcher(dataset, spec)
    model = TwoTower(spec, dim=config.dim, hidden=config.hidden)
    optimizer = Adam(model, lr=config.learning_rate, weight_decay=config.weight_decay)
    n, n_items = len(examples.item_ids), dataset.n_items
    batch_size = min(config.batch_size, n)
    log_q = None
    if config.logq_correction:  # the global batch's expected counts, over every example
        log_q = torch.from_numpy(
            sampling_log_q(examples.item_ids, n_items, batch_size, config.mixed_negatives)
        )
    item_plays = np.bincount(examples.item_ids, minlength=n_items)
    dropout = id_dropout(spec, config)
    drop_rates = id_dropout_rates(item_plays, dropout, config.id_dropout_plays)
    # This worker's rows and its share of each batch; the order and negatives come from one rng
    # seeded alike on every worker, so the workers' batches and negatives stay in step.
    mine = distributed.shard(n, config.seed)
    local_size = distributed.local_batch(batch_size)
    towers = distributed.wrap(Towers(model))
    epoch_losses = []
    clock, seen = distributed.LoopClock(), 0
    batches = len(mine) // local_size  # full batches per epoch, this worker's
    bar = Progress("train recall two-tower", config.epochs * batches, "batches", enabled=progress)
    for epoch in range(config.epochs):
        order = mine[rng.permutation(len(mine))]
        losses = []
        model.train()
        with clock.epoch():
            for start in range(0, len(order) - local_size + 1, local_size):  # full: log q
                rows = order[start : start + local_size]
                negatives = catalogue_negatives(rng, n_items, config.mixed_negatives)
                drop_id = None
                if dropout > 0:  # drawn only then: without it the seeded stream stays as it was
                    columns = np.concatenate([examples.item_ids[rows], negatives])
                    drop_id = rng.random(len(columns)) < drop_rates[columns]
                loss = batch_loss(
                    towers,
                    batcher,
                    examples.user_ids[rows],
                    examples.item_ids[rows],
                    examples.histories[rows],
                    negatives,
                    log_q,
                    config.temperature,
                    drop_id,
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update()
        seen += batches * local_size * distributed.world_size()
        mean_loss = np.mean(distributed.sum_values(np.array(losses))) / distributed.world_size()
        epoch_losses.append(round(float(mean_loss), 4))
        bar.note(epoch=epoch + 1, loss=epoch_losses[-1])
    bar.close()
    model.eval()
    # Items nobody played in training are served as an upload is: without their (untrained) id.
    model.cold_items = (item_plays == 0) if dropout > 0 else np.zeros(n_items, bool)
    # The item vectors the index will hold, computed once from the same item features.
    model.item_vectors = all_item_vectors(model, batcher, n_items)
    model.metrics = {
        "train_loss_per_epoch": epoch_losses,
        "n_examples": int(n),
        "train_seconds": round(time.perf_counter() - started, 1),
        "workers": distributed.world_size(),
        **clock.report(seen),
        "config": asdict(config),
    }
    return model


@torch.no_grad()
def all_item_vectors(model: TwoTower, batcher: Batcher, n_items: int) -> np.ndarray:
    """(n_items, dim) float32, row = item id, row 0 (unknown) zeros; the model's `cold_items`
    (no plays in training) are scored without their id, as a new upload is."""
    ids = np.arange(n_items, dtype=np.int64)
    cold = getattr(model, "cold_items", np.zeros(n_items, bool))
    cold = np.pad(cold[:n_items], (0, max(0, n_items - len(cold))), constant_values=True)
    vectors = model.item_vector(**batcher.item_inputs(ids, cold)).numpy().astype(np.float32)
    vectors[0] = 0.0
    return vectors


@torch.no_grad()
def user_vectors(
    model: TwoTower, batcher: Batcher, user_ids: np.ndarray, histories: np.ndarray
) -> np.ndarray:
    """(n, dim) float32 user vectors for given users and their (n, history_length) histories."""
    return model.user_vector(**batcher.user_inputs(user_ids, histories)).numpy()
