"""The student's training and report examples: requests over recall's candidates.

Arrays are request-major, (n_requests, n_candidates) with a validity mask, so a listwise loss can
see each request's candidates together. training/prerank_examples.py builds them from real recall
outputs scored by the teacher; distillation (distill.py) and the export's sample (export.py) read
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Requests:
    user_ids: np.ndarray  # (R,) int64
    ts: np.ndarray  # (R,) int64, request time (Unix s); history is strictly before it
    history: np.ndarray  # (R, history_length) int64 item ids, newest first, 0-padded
    item_ids: np.ndarray  # (R, K) int64 candidates in recall order, 0-padded
    valid: np.ndarray  # (R, K) bool
    labels: np.ndarray  # (R, K) float32: 1 = the user played it after ts (in the labelled period)
    teacher_logits: np.ndarray  # (R, K) float32, the teacher's fused score as a logit
    teacher_scores: np.ndarray  # (R, K) float32, the teacher's fused score (ranking order)
