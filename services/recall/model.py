"""The two-tower retrieval model (YouTubeDNN / DSSM style), built from the FeatureSpec.

User tower: every "user" field of the spec (profile) plus the mean-pooled recent history, which
shares the item_id embedding with the item tower. Item tower: item id, creator, categories and,
when the dataset has one, a linear projection of the item's content vector.
Both towers end in an L2-normalised vector, so a dot product is a cosine and FAISS inner-product
search is the serving twin of the training logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cascade.embeddings import FieldEmbedding
from cascade.features import FeatureSpec


def _mlp(width_in: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class TwoTower(nn.Module):
    """user_vector(**user inputs) and item_vector(**item inputs), both (b, dim), unit length."""

    # Set by training (two_tower.py): the run's metrics and the item vectors the index holds.
    metrics: dict[str, object]
    item_vectors: np.ndarray  # (n_items, dim), row = item id
    cold_items: np.ndarray  # (n_items,) bool: no plays in training, served without their id

    def __init__(self, spec: FeatureSpec, dim: int = 64, hidden: int = 256):
        super().__init__()
        self.spec = spec
        self.user_fields = tuple(f.name for f in spec.of("user")) + tuple(
            f.name for f in spec.of("history")
        )
        self.item_fields = tuple(f.name for f in spec.of("item"))
        towers = {f.name: FieldEmbedding(f) for f in (*spec.of("user"), *spec.of("item"))}
        self.embeddings = nn.ModuleDict(towers)
        shared = towers["item_id"].table  # history pools the item tower's id embedding
        for f in spec.of("history"):
            self.embeddings[f.name] = FieldEmbedding(f, shared)
        widths = {f.name: f.width for f in spec.fields}
        self.user_mlp = _mlp(sum(widths[n] for n in self.user_fields), hidden, dim)
        self.item_mlp = _mlp(sum(widths[n] for n in self.item_fields), hidden, dim)
        self.dim = dim

    def _tower(self, names: tuple[str, ...], mlp: nn.Module, inputs: dict) -> torch.Tensor:
        parts = [self.embeddings[name](inputs[name]) for name in names]
        return nn.functional.normalize(mlp(torch.cat(parts, dim=-1)), dim=-1)

    def user_vector(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self._tower(self.user_fields, self.user_mlp, inputs)

    def item_vector(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self._tower(self.item_fields, self.item_mlp, inputs)


class ItemTower(nn.Module):
    """The item tower alone with positional inputs in `fields` order: what ONNX export traces,
    so a stage gives an upload its vector from creator, categories and content without torch."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model
        self.fields = model.item_fields

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.item_vector(**dict(zip(self.fields, inputs, strict=True)))


class UserTower(nn.Module):
    """The user tower alone with positional inputs in `fields` order: what ONNX export traces."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model
        self.fields = model.user_fields

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.user_vector(**dict(zip(self.fields, inputs, strict=True)))


def corrected_logits(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    log_q: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """(b, n) sampled-softmax logits: cosine / temperature - log q(item).

    Sampling-bias correction (Yi et al. 2019): an item drawn as a negative with probability q is
    over-represented in the softmax denominator by q, so its logit is lowered by log q.
    """
    logits = user_vectors @ item_vectors.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    return logits
