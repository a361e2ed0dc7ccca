"""Distillation: the loss terms on hand cases, and a student that moves toward its teacher."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from services.prerank.distill import (
    listwise_loss,
    soft_label_loss,
    student_scores,
    train_student,
    variant_config,
)
from tests.services.prerank.conftest import CONFIG


def test_soft_label_loss_on_a_hand_case():
    # Equal logits at T = 2: target sigmoid(0) = 0.5, BCE = ln 2, times T² = 4.
    loss = soft_label_loss(torch.tensor([0.0]), torch.tensor([0.0]), 2.0)
    assert math.isclose(float(loss[0]), 4 * math.log(2), rel_tol=1e-6)
    # Student 2, teacher -2, T = 1: target q = sigmoid(-2); BCE = -q log σ(2) - (1-q) log σ(-2).
    q = 1 / (1 + math.exp(2))
    expected = -q * math.log(1 / (1 + math.exp(-2))) - (1 - q) * math.log(1 / (1 + math.exp(2)))
    loss = soft_label_loss(torch.tensor([2.0]), torch.tensor([-2.0]), 1.0)
    assert math.isclose(float(loss[0]), expected, rel_tol=1e-6)
    # The loss is lowest where the student matches the teacher.
    grid = torch.linspace(-3, 3, 61)
    losses = soft_label_loss(grid, torch.full_like(grid, 1.2), 2.0)
    assert abs(float(grid[losses.argmin()]) - 1.2) < 0.11


def test_listwise_loss_ignores_padding_and_is_log_k_for_flat_scores():
    valid = torch.tensor([[True, True, True, False]])
    flat = listwise_loss(torch.zeros(1, 4), torch.tensor([[1.0, 1.0, 1.0, 50.0]]), valid, 1.0)
    assert math.isclose(float(flat), math.log(3), rel_tol=1e-6)
    agree = listwise_loss(
        torch.tensor([[3.0, 0.0, -3.0, 9.0]]), torch.tensor([[3.0, 0, -3, 0]]), valid, 1.0
    )
    disagree = listwise_loss(
        torch.tensor([[-3.0, 0.0, 3.0, 9.0]]), torch.tensor([[3.0, 0, -3, 0]]), valid, 1.0
    )
    assert float(agree) < float(disagree)


def _pairwise_agreement(student: np.ndarray, teacher: np.ndarray, valid: np.ndarray) -> float:
    """Share of candidate pairs within a request that the student orders as the teacher does."""
    agree = total = 0
    for s, t, v in zip(student, teacher, valid, strict=True):
        s, t = s[v], t[v]
        ds, dt = np.sign(s[:, None] - s[None, :]), np.sign(t[:, None] - t[None, :])
        mask = dt != 0
        agree += int((ds[mask] == dt[mask]).sum())
        total += int(mask.sum())
    return agree / total


def test_requests_are_real_recall_outputs_with_teacher_and_true_labels(distilled):
    r = distilled.requests
    assert r.valid.any(axis=1).all() and r.labels[r.valid].any()
    assert not r.labels[~r.valid].any()
    # Consumed items never come back from recall: no candidate is in the request's history.
    for history, items, valid in zip(r.history, r.item_ids, r.valid, strict=True):
        assert not np.isin(items[valid], history[history > 0]).any()
    # The teacher's logit is monotone in its fused score.
    rows = r.valid
    order = np.argsort(r.teacher_scores[rows])
    assert np.all(np.diff(r.teacher_logits[rows][order]) >= -1e-5)


def test_distillation_raises_agreement_with_the_teacher(distilled):
    r, world = distilled.requests, distilled.world
    agreement = {}
    for name in ("labels_only", "distilled"):
        config = variant_config(name, replace(CONFIG, epochs=25))
        model, _ = train_student(r, world.dataset, world.spec, config)
        scores = student_scores(model, world.dataset, world.spec, r)
        agreement[name] = _pairwise_agreement(scores, r.teacher_scores, r.valid)
    assert agreement["distilled"] > agreement["labels_only"] + 0.1, agreement
    assert agreement["distilled"] > 0.7, agreement
