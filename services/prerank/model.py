"""The pre-rank student: a two-tower model whose dot product imitates the ranker's fused score.

    user tower: user profile fields + mean-pooled recent history ─▶ MLP ─▶ (dim) ⊕ [1]
    item tower: item id, creator, categories                     ─▶ MLP ─▶ (dim) ⊕ [bias]
    score (a logit) = user_vector · item_vector

The constant 1 on the user side meets a learned per-item bias on the item side, so the item's
prior (popularity, quality) rides inside the same dot product: serving stays one 2-D matmul over
precomputed item vectors. Vectors are not normalised: the score must reach the teacher's logit
range. `feature_heads` project the towers' vectors onto the teacher's id embeddings for the
optional feature-distillation term (training only; they are not exported).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cascade.embeddings import FieldEmbedding
from cascade.features import FeatureSpec


@dataclass(frozen=True)
class StudentConfig:
    dim: int = 32  # vector width before the bias column
    hidden: int = 128


def _mlp(width_in: int, hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class Student(nn.Module):
    def __init__(self, spec: FeatureSpec, config: StudentConfig, teacher_widths=(0, 0)):
        super().__init__()
        self.config = config
        self.user_fields = tuple(f.name for f in (*spec.of("user"), *spec.of("history")))
        self.item_fields = tuple(f.name for f in spec.of("item"))
        towers = {f.name: FieldEmbedding(f) for f in (*spec.of("user"), *spec.of("item"))}
        self.embeddings = nn.ModuleDict(towers)
        for f in spec.of("history"):  # a played item and a candidate share one id embedding
            self.embeddings[f.name] = FieldEmbedding(f, towers["item_id"].table)
        width = {f.name: f.width for f in spec.fields}
        self.user_mlp = _mlp(sum(width[n] for n in self.user_fields), config.hidden, config.dim)
        # The item tower's last unit is the item bias (see the module docstring).
        self.item_mlp = _mlp(sum(width[n] for n in self.item_fields), config.hidden, config.dim + 1)
        user_width, item_width = teacher_widths
        self.feature_heads = nn.ModuleDict()
        if user_width and item_width:
            self.feature_heads["user"] = nn.Linear(config.dim + 1, user_width)
            self.feature_heads["item"] = nn.Linear(config.dim + 1, item_width)

    def _embed(self, names: tuple[str, ...], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.embeddings[n](inputs[n]) for n in names], dim=-1)

    def user_vector(self, **inputs: torch.Tensor) -> torch.Tensor:
        """(b, dim + 1): the tower's output with a constant 1 appended."""
        hidden = self.user_mlp(self._embed(self.user_fields, inputs))
        return torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=1)

    def item_vector(self, **inputs: torch.Tensor) -> torch.Tensor:
        """(b, dim + 1): the tower's output, the last column being the item bias."""
        return self.item_mlp(self._embed(self.item_fields, inputs))


class UserTower(nn.Module):
    """The user tower alone with positional inputs in `fields` order: what ONNX export traces."""

    def __init__(self, model: Student):
        super().__init__()
        self.model = model
        self.fields = model.user_fields

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.user_vector(**dict(zip(self.fields, inputs, strict=True)))
