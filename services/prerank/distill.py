"""Distillation of the pre-rank student from the rank teacher, over real recall outputs.

The command is training/prerank_train.py (`cascade train prerank`). Requests
(training/prerank_examples.py): one per training user, at the time of their interaction at
`request_fraction` of their training sequence, history strictly before it; candidates: the recall
merge (2,000); each request keeps every positive plus a seeded random sample, `sampled_per_request`
in all (bounds labelling and training cost). Labels: the teacher's fused score as a logit (soft)
and "played later in the training period" (true); never test data. Loss = BCE(true) + T² ·
BCE(student / T, sigmoid(teacher / T)) [+ ListNet on the teacher's order within a request] [+
feature distillation onto the teacher's id embeddings]. Deterministic for a seed with one torch
thread. Under torchrun each worker trains on its shard of the requests, in batches of
requests_per_batch / workers, with gradients averaged across workers. Known approximation:
recall's tables and two-tower are built from the whole training period, so a training request's
candidates come from channels that saw the rest of that period (test data is never used).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cascade import distributed
from cascade.data.schema import Dataset
from cascade.embeddings import Adam
from cascade.features import FeatureSpec, encode_by_id
from cascade.progress import Progress
from services.prerank.model import Student, StudentConfig
from services.prerank.requests import Requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    seed: int = 0
    candidates_per_request: int = 2000  # recall's merged list
    sampled_per_request: int = 400  # kept for training: all positives + seeded random others
    request_fraction: float = 0.7  # request point inside each user's training sequence
    min_train_interactions: int = 5  # users with fewer make no training request
    max_users: int = 3000  # seeded sample of users above this (synthetic has 20k)
    epochs: int = 30
    requests_per_batch: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-6
    label_weight: float = 1.0
    soft_weight: float = 1.0
    temperature: float = 2.0
    listwise_weight: float = 0.0
    feature_weight: float = 0.0
    threads: int = 1  # torch threads per worker
    student: StudentConfig = field(default_factory=StudentConfig)


# The ablation's rows; "distilled_listwise" is what `distill` ships unless told otherwise.
VARIANTS: dict[str, dict[str, Any]] = {  # DistillConfig fields each variant changes
    "labels_only": {"soft_weight": 0.0},
    "distilled": {},
    "distilled_listwise": {"listwise_weight": 1.0},
    "distilled_feature": {"feature_weight": 1.0},
}
DEFAULT_VARIANT = "distilled_listwise"


def variant_config(name: str, base: DistillConfig | None = None) -> DistillConfig:
    return replace(base or DistillConfig(), **VARIANTS[name])


def soft_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · mean BCE between sigmoid(student / T) and sigmoid(teacher / T), per element (...)."""
    target = torch.sigmoid(teacher_logits / temperature)
    loss = F.binary_cross_entropy_with_logits(
        student_logits / temperature, target, reduction="none"
    )
    return loss * temperature**2


def listwise_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor, t: float
) -> torch.Tensor:
    """ListNet: cross-entropy of softmax(student / T) against softmax(teacher / T) within each
    request (rows of (R, K)), padding excluded; mean over requests."""
    low = torch.finfo(student_logits.dtype).min
    target = torch.softmax((teacher_logits / t).masked_fill(~valid, low), dim=1)
    log_p = torch.log_softmax((student_logits / t).masked_fill(~valid, low), dim=1)
    return -(target * log_p.masked_fill(~valid, 0.0)).sum(dim=1).mean()


class Inputs:
    """Encoded user and item tables as tensors, indexed by id (row 0 = unknown)."""

    def __init__(self, dataset: Dataset, spec: FeatureSpec):
        users = encode_by_id(spec, "user", dataset.users, "user_id", dataset.n_users)
        items = encode_by_id(spec, "item", dataset.items, "item_id", dataset.n_items)
        self.users = {k: torch.from_numpy(v) for k, v in users.items()}
        self.items = {k: torch.from_numpy(v) for k, v in items.items()}
        (self.history_name,) = (f.name for f in spec.of("history"))

    def user(self, user_ids: torch.Tensor, history: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**{k: v[user_ids] for k, v in self.users.items()}, self.history_name: history}

    def item(self, item_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[item_ids] for k, v in self.items.items()}


def teacher_embeddings(weights: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's user_id and item_id embedding tables, each scaled to unit std: the
    representation the feature-distillation heads regress onto."""
    found = {}
    for entity in ("user_id", "item_id"):
        (key,) = (k for k in weights if k.endswith(f"tables.{entity}.weight"))
        table = torch.from_numpy(weights[key]).float()
        found[entity] = table / table[1:].std().clamp(min=1e-6)
    return found["user_id"], found["item_id"]


def request_scores(model: Student, inputs: Inputs, user_ids, history, item_ids) -> tuple:
    """(R, K) student logits plus the user and item vectors they came from."""
    users = model.user_vector(**inputs.user(user_ids, history))  # (R, d + 1)
    items = model.item_vector(**inputs.item(item_ids.reshape(-1)))  # (R * K, d + 1)
    items = items.reshape(*item_ids.shape, -1)
    return (items @ users.unsqueeze(2)).squeeze(2), users, items


class DistillLoss(torch.nn.Module):
    """One batch of requests' training loss as a module's forward, so DistributedDataParallel
    (which syncs the gradients of what its forward computed) can wrap the student."""

    def __init__(
        self,
        model: Student,
        inputs: Inputs,
        config: DistillConfig,
        teacher: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        super().__init__()
        self.model, self.inputs, self.config = model, inputs, config
        self.teacher = teacher if config.feature_weight > 0 else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        config, model, teacher = self.config, self.model, self.teacher
        valid, teacher_logits = batch["valid"], batch["teacher_logits"]
        logits, users, items = request_scores(
            model, self.inputs, batch["user_ids"], batch["history"], batch["item_ids"]
        )
        weight = valid.float() / valid.float().sum().clamp(min=1.0)
        loss = (
            config.label_weight
            * (
                F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")
                * weight
            ).sum()
        )
        if config.soft_weight:
            soft = soft_label_loss(logits, teacher_logits, config.temperature)
            loss = loss + config.soft_weight * (soft * weight).sum()
        if config.listwise_weight:
            loss = loss + config.listwise_weight * listwise_loss(
                logits, teacher_logits, valid, config.temperature
            )
        if teacher is not None:
            item_ids = batch["item_ids"][valid]
            loss = loss + config.feature_weight * (
                F.mse_loss(model.feature_heads["user"](users), teacher[0][batch["user_ids"]])
                + F.mse_loss(model.feature_heads["item"](items[valid]), teacher[1][item_ids])
            )
        return loss


def train_student(
    requests: Requests,
    dataset: Dataset,
    spec: FeatureSpec,
    config: DistillConfig,
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
    initial: dict[str, torch.Tensor] | None = None,
) -> tuple[Student, dict]:
    """Adam over batches of whole requests for `config.epochs`; returns the model in eval mode.
    `initial`: a published student's state dict to start from (continuous training)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    use_features = config.feature_weight > 0 and teacher is not None
    widths = (
        (teacher[0].shape[1], teacher[1].shape[1])
        if teacher is not None and use_features
        else (0, 0)
    )
    model = Student(spec, config.student, widths)
    if initial is not None:
        model.load_state_dict(initial, strict=not use_features)  # feature heads: training only
    inputs = Inputs(dataset, spec)
    optimizer = Adam(model, lr=config.learning_rate, weight_decay=config.weight_decay)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in vars(requests).items()}
    if distributed.world_size() > 1:  # this worker's shard of the requests
        mine = torch.from_numpy(distributed.shard(len(requests.user_ids), config.seed))
        tensors = {k: v[mine] for k, v in tensors.items()}
    per_batch = distributed.local_batch(config.requests_per_batch)
    objective = distributed.wrap(DistillLoss(model, inputs, config, teacher))
    generator = torch.Generator().manual_seed(config.seed)
    started, history, clock, seen = time.perf_counter(), [], distributed.LoopClock(), 0
    batches = -(-len(tensors["user_ids"]) // per_batch)  # per epoch, this worker's
    bar = Progress("train prerank", config.epochs * batches, "batches")
    for epoch in range(config.epochs):
        model.train()
        total, steps = 0.0, 0
        order = torch.randperm(len(tensors["user_ids"]), generator=generator)
        with clock.epoch():
            for s in range(0, len(order), per_batch):
                batch = {k: v[order[s : s + per_batch]] for k, v in tensors.items()}
                loss = objective(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
                bar.update()
        seen += len(order) * distributed.world_size()  # requests, every worker's
        total = float(distributed.sum_values(np.array([total]))[0]) / distributed.world_size()
        history.append({"epoch": epoch + 1, "loss": round(total / max(steps, 1), 5)})
        log.info("epoch %d: loss %.5f", epoch + 1, total / max(steps, 1))
        bar.note(epoch=epoch + 1, loss=history[-1]["loss"])
    bar.close()
    model.eval()
    info = {
        "epochs": history,
        "requests": int(len(requests.user_ids)),
        "rows": int(requests.valid.sum()),
        "positive_rate": float(requests.labels[requests.valid].mean()),
        "seconds": round(time.perf_counter() - started, 1),
        "workers": distributed.world_size(),
        **clock.report(seen),  # examples: requests
        "config": asdict(config),
    }
    return model, info


@torch.no_grad()
def item_vectors(model: Student, dataset: Dataset, spec: FeatureSpec) -> np.ndarray:
    """(n_items, dim + 1) float32 for every id; row 0 (unknown) is zeros."""
    inputs = Inputs(dataset, spec)
    vectors = model.item_vector(**inputs.item(torch.arange(dataset.n_items))).numpy()
    vectors[0] = 0.0
    return np.ascontiguousarray(vectors, dtype=np.float32)


@torch.no_grad()
def student_scores(
    model: Student, dataset: Dataset, spec: FeatureSpec, requests: Requests, chunk: int = 256
) -> np.ndarray:
    """(R, K) student logits for requests, computed as serving does: catalog item vectors once,
    one user vector per request, a matmul per request (chunked to bound memory)."""
    vectors = item_vectors(model, dataset, spec)  # (n_items, d + 1)
    inputs = Inputs(dataset, spec)
    out = np.zeros(requests.item_ids.shape, dtype=np.float32)
    for s in range(0, len(requests.user_ids), chunk):
        part = slice(s, s + chunk)
        users = model.user_vector(
            **inputs.user(
                torch.from_numpy(requests.user_ids[part]), torch.from_numpy(requests.history[part])
            )
        ).numpy()  # (r, d + 1)
        out[part] = np.matmul(vectors[requests.item_ids[part]], users[:, :, None])[:, :, 0]
    return out
