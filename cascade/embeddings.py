"""Model building blocks the stages' networks share (torch: training and export only, never
imported by a server): one embedding table per feature field."""

from __future__ import annotations

import torch
from torch import nn

from cascade.features import Field


class FieldEmbedding(nn.Module):
    """One embedding table; "multi" and "sequence" fields are mean-pooled over non-zero ids."""

    def __init__(self, field: Field, table: nn.Module | None = None):
        super().__init__()
        self.kind = field.kind
        self.table: nn.Module
        if field.kind == "dense":  # a content vector: a linear projection, zeros stay zeros
            self.table = nn.Linear(field.vocab_size, field.width, bias=False)
        else:
            self.table = (
                table
                if table is not None
                else nn.Embedding(field.vocab_size, field.width, padding_idx=0)
            )

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        vectors = self.table(rows)
        if self.kind in ("multi", "sequence"):
            present = (rows > 0).unsqueeze(-1).to(vectors.dtype)  # (b, n, 1)
            count = present.sum(dim=1).clamp(min=1.0)
            return (vectors * present).sum(dim=1) / count
        return vectors
