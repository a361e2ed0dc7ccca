"""Logistic regression on the ranker's features: the report's baseline, fitted by the same `fit`.

One weight per feature value and one bias per task, so it shares the ranker's rows and `logits`.
"""

from __future__ import annotations

import torch
from torch import nn

from cascade.features import FeatureSpec
from services.rank.model import FieldEmbeddings, ModelConfig


class LogisticRegression(nn.Module):
    """One weight per feature value (history and categories mean-pooled), one bias per task."""

    def __init__(self, spec: FeatureSpec, tasks: tuple[str, ...]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.weights = nn.ModuleList(
            FieldEmbeddings(spec, ModelConfig(per_field_widths=False, common_width=1))
            for _ in tasks
        )
        self.bias = nn.Parameter(torch.zeros(len(tasks)))

    def logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        # first-order terms plus the pooled history's weight (a 1-wide embedding per item)
        per_task = []
        for weights in self.weights:
            vectors, first = weights(list(inputs))
            per_task.append(first + vectors[-1][:, 0])
        return torch.stack(per_task, dim=1) + self.bias

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(*inputs))
