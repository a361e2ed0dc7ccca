"""Model building blocks the stages' networks share (torch: training and export only, never
imported by a server): one embedding table per feature field."""

from __future__ import annotations

import torch
from torch import nn

from cascade.features import Field

# An id table with more rows than this (a 100k-item or million-item catalogue's item ids) trains
# with sparse gradients and lazy Adam (`Adam` below): dense Adam moves every row of every table at
# each step, 30 / 255 / 3,487 ms a step for 10k / 100k / 1M rows x 32 against 11 / 10 / 23 ms
# sparse on a loaded 2-core machine (docs/large_world.md). The built-in worlds' tables (ml-100k,
# the 20k-user 10k-item synthetic world) are smaller and train with plain Adam.
SPARSE_ROWS = 50_000


def id_table(rows: int, width: int) -> nn.Embedding:
    """An id table (row 0 the unknown id); sparse gradients above SPARSE_ROWS rows."""
    return nn.Embedding(rows, width, padding_idx=0, sparse=rows > SPARSE_ROWS)


class Adam:
    """Adam over the dense parameters, SparseAdam over the sparse id tables: only the rows a
    batch touched move (lazy Adam), and without weight decay (torch's SparseAdam has none)."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float) -> None:
        sparse = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
        parameters = list(model.parameters())
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.Adam(
                [p for p in parameters if id(p) not in sparse], lr=lr, weight_decay=weight_decay
            )
        ]
        if sparse:
            self.optimizers.append(
                torch.optim.SparseAdam([p for p in parameters if id(p) in sparse], lr=lr)
            )

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


class FieldEmbedding(nn.Module):
    """One embedding table; "multi" and "sequence" fields are mean-pooled over non-zero ids."""

    def __init__(self, field: Field, table: nn.Module | None = None):
        super().__init__()
        self.kind = field.kind
        self.table: nn.Module
        if field.kind == "dense":  # a content vector: a linear projection, zeros stay zeros
            self.table = nn.Linear(field.vocab_size, field.width, bias=False)
        else:
            self.table = table if table is not None else id_table(field.vocab_size, field.width)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        vectors = self.table(rows)
        if self.kind in ("multi", "sequence"):
            present = (rows > 0).unsqueeze(-1).to(vectors.dtype)  # (b, n, 1)
            count = present.sum(dim=1).clamp(min=1.0)
            return (vectors * present).sum(dim=1) / count
        return vectors
