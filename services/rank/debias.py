"""Position-bias corrections for the ranker's training: a shallow position tower and IPS weights.

Logged labels mix relevance with where an item was shown: a slot lower on the page is examined
less. Two training options remove that from the served score:

- the position tower (PAL, Guo et al. 2019; YouTube's "shallow tower", Zhao et al. 2019): a
  per-task logit of the shown slot, added to the model's logits in training only, so the main
  network need not explain the slot; serving (the exported ONNX graph) never sees it;
- IPS (Joachims et al. 2017): a positive label observed at slot p counts 1 / examination(p),
  where the world's examination probability is known (the synthetic world's
  `cascade.data.synthetic.examination`); negatives keep weight 1.

Rows with an unknown slot (position -1, recall examples) get the tower's zero row and weight 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cascade.data.schema import Dataset
from cascade.data.synthetic import SyntheticConfig, examination


def position_ids(position: np.ndarray, slots: int) -> np.ndarray:
    """The tower's input: slot p (0 first) as p + 1, slots past the last as the last, unknown
    (negative) as 0."""
    position = np.asarray(position, dtype=np.int64)
    return np.where(position < 0, 0, np.minimum(position, slots - 1) + 1)


class PositionTower(nn.Module):
    """One learnt logit per (slot, task); row 0 (unknown slot) stays zero."""

    def __init__(self, slots: int, n_tasks: int):
        super().__init__()
        self.table = nn.Embedding(slots + 1, n_tasks, padding_idx=0)
        nn.init.zeros_(self.table.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (b,) -> (b, n_tasks)
        return self.table(ids)


def known_examination(dataset: Dataset) -> np.ndarray:
    """P(examined | slot) of the world that logged `dataset`; ValueError when it is unknown
    (only the synthetic world records it)."""
    config = dataset.meta.get("config")
    if not dataset.truth or not isinstance(config, dict) or "position_decay" not in config:
        raise ValueError(
            f"IPS needs the examination probabilities of dataset {dataset.name!r}'s logging; "
            "only the synthetic world knows them"
        )
    return examination(SyntheticConfig(**config))


def ips_weights(labels: np.ndarray, position: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """(n, T) loss weights: 1 / propensity[slot] on positive labels at a known slot (past the
    last: the last slot's), 1 elsewhere."""
    position = np.asarray(position, dtype=np.int64)
    known = position >= 0
    slot = np.minimum(np.where(known, position, 0), len(propensity) - 1)
    inverse = np.where(known, 1.0 / propensity[slot], 1.0).astype(np.float32)
    return np.where(labels > 0, inverse[:, None], np.float32(1.0)).astype(np.float32)
