"""Item-id dropout: the ranker learns to score an item whose id it has never seen (an upload).

Serving encodes an item id outside the model's vocabulary as row 0 (`cascade.features
.encode_field`), and an item the bundle's MF model does not know has its `mf_position` unknown
(row 0) too. Trained only on known items, both rows stay at their zero init (`padding_idx`), so
an upload is scored as no item the model ever learnt from and falls below every known one. With
dropout, each training row, with a seeded probability p drawn per batch, is shown with both its
id-keyed inputs replaced by the unknown row, and those rows take gradients: row 0 learns "an
average item with these metadata" (creator, categories, counters, age stay the item's own).
"""

from __future__ import annotations

import torch
from torch import nn

# Inputs keyed by the item's id: its own embedding row, and its rank in the MF model, which knows
# only the items it was fitted on. An upload has both unknown at serving.
ID_KEYED = ("item_id", "mf_position")


def learn_unknown_rows(model: nn.Module) -> None:
    """Lets row 0 of the id-keyed fields' tables (and first-order weights) take gradients; a
    model without FieldEmbeddings (a baseline) is left as it is. The history's padding is masked
    before pooling, so it still adds nothing to the shared item_id table's row 0."""
    embeddings = getattr(model, "embeddings", None)
    for name in ID_KEYED:
        for tables in (getattr(embeddings, "tables", {}), getattr(embeddings, "first_order", {})):
            if name in tables:
                tables[name].padding_idx = None


class ItemIdDropout:
    """Per batch, replaces the id-keyed inputs of a seeded random p of the rows by 0 (unknown)."""

    def __init__(self, names: tuple[str, ...], p: float, seed: int):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"item id dropout must be in [0, 1), got {p}")
        self.columns = [i for i, name in enumerate(names) if name in ID_KEYED]
        self.p = p
        # Its own stream: the batch order (the training generator) is the same with or without.
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.p == 0.0:
            return inputs
        rows = len(inputs[self.columns[0]]) if self.columns else 0
        dropped = torch.rand(rows, generator=self.generator) < self.p
        out = list(inputs)
        for i in self.columns:
            out[i] = torch.where(dropped, torch.zeros_like(inputs[i]), inputs[i])
        return out
