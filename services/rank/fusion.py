"""The ranker's fusion weights: which mix of task probabilities the ranking score serves.

Training tunes them on its validation slice (`TrainConfig.fusion_scales`): the primary task keeps
weight 1 and the others' configured weights are scaled; the scale whose fused score orders the
primary task best (GAUC) is what rank.json records and serving uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascade import metrics
from cascade.data.schema import Table


def tune_fusion(
    probabilities: np.ndarray,
    impressions: Table,
    tasks: tuple[str, ...],
    fusion: dict[str, float],
    scales: tuple[float, ...],
) -> tuple[dict[str, float], list[dict]]:
    """The fusion weights to serve: the primary task (tasks[0]) at 1, every other task at its
    `fusion` weight times the scale whose fused score has the best primary-task GAUC on
    `impressions` (ties: the larger scale, the closer to the configured weights). Without a user
    who has both labels of the primary task there is nothing to compare: `fusion` as given."""
    primary = tasks[0]
    labels = impressions[primary].astype(bool)
    users = impressions["user_id"]
    if not (np.isin(users[labels], users[~labels])).any():
        return {t: float(fusion.get(t, 1.0)) for t in tasks}, []
    tried: list[dict[str, Any]] = []
    for scale in scales:
        weights = {t: 1.0 if t == primary else scale * fusion.get(t, 1.0) for t in tasks}
        fused = probabilities @ np.array([weights[t] for t in tasks], dtype=np.float64)
        value = metrics.gauc(impressions["user_id"], impressions[primary], fused)
        tried.append({"scale": scale, "weights": weights, f"{primary} GAUC": round(value, 5)})
    best = max(tried, key=lambda row: (row[f"{primary} GAUC"], row["scale"]))
    return best["weights"], tried
