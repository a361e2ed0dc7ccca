"""The report's agreement and end-to-end measures on hand-made requests."""

from __future__ import annotations

import numpy as np

from services.prerank.requests import Requests
from training.prerank_evaluate import agreement, cascade_order, ndcg10


def _requests(k: int = 600) -> Requests:
    rng = np.random.default_rng(0)
    teacher = rng.random((2, k)).astype(np.float32)
    valid = np.ones((2, k), dtype=bool)
    valid[1, k - 50 :] = False
    labels = np.zeros((2, k), dtype=np.float32)
    labels[:, np.argsort(-teacher[0])[:3]] = 1.0
    return Requests(
        np.array([1, 2]),
        np.array([10, 20]),
        np.zeros((2, 5), np.int64),
        np.arange(1, 2 * k + 1).reshape(2, k),
        valid,
        labels * valid,
        teacher.copy(),
        teacher,
    )


def test_a_student_equal_to_the_teacher_agrees_fully_and_a_reversed_one_does_not():
    r = _requests()
    same = agreement(r.teacher_scores, r)
    assert same["teacher_top100_recall_at_500"] == 1.0
    assert np.isclose(same["ndcg100_vs_teacher"], 1.0)
    reverse = agreement(-r.teacher_scores, r)
    # Request 0 (600 valid): the worst 500 miss the best 100. Request 1 (550 valid, 50 padding):
    # the worst 500 hold 50 of the best 100. Padding never counts.
    assert np.isclose(reverse["teacher_top100_recall_at_500"], (0.0 + 0.5) / 2)
    assert reverse["ndcg100_vs_teacher"] < 0.05


def test_cascade_order_keeps_the_students_top_500_in_the_teachers_order():
    r = _requests()
    order = cascade_order(-r.teacher_scores, r)  # the worst 500 by the teacher
    assert order.shape == (2, 500)
    kept = np.take_along_axis(r.teacher_scores, order, axis=1)
    assert np.all(np.diff(kept, axis=1) <= 0)
    assert r.valid[1][order[1]].all()  # padding never passes
    users = np.array([0])
    assert ndcg10(cascade_order(r.teacher_scores, r), r, users) == 1.0
    assert ndcg10(order, r, users) == 0.0
