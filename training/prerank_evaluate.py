"""The pre-rank report: students (labels only / distilled / + listwise / + feature distillation)
over real recall candidates in the test period, against the teacher and recall's own order.

    python -m training.prerank_evaluate --dataset ml-100k [synthetic] --out results/prerank

Each dataset's bundle `<dataset>-v1` must hold recall + rank (see training/prerank_train.py).
Every variant is distilled here from the same training requests and seed (the shipped prerank
component is the distilled_listwise row, trained by `distill` with the same config). Test
requests: each test user at their cut (first test interaction) with their training history; the
candidates are the recall merge's 2,000; true labels: the user's test-period plays. Metrics:
AUC/GAUC on true labels; agreement with the teacher (recall of the teacher's top-100 inside the
student's top-500; NDCG@100 of the student's order with gain 100 - teacher rank for the teacher's
top-100); end-to-end NDCG@10 when the student's top-500 go to the teacher. Writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from cascade import metrics
from services.prerank.distill import (
    VARIANTS,
    DistillConfig,
    student_scores,
    teacher_embeddings,
    train_student,
    variant_config,
)
from services.prerank.requests import Requests
from training.distill_world import open_world, test_requests, training_requests

log = logging.getLogger(__name__)
KEEP = 500  # what the pre-ranker passes to the ranker
TEACHER_TOP = 100


def _order(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(R, K) candidate positions best first; padding last."""
    return np.argsort(-np.where(valid, scores, -np.inf), axis=1, kind="stable")


def agreement(student: np.ndarray, r: Requests) -> dict:
    """Recall of the teacher's top-100 in the student's top-500, and NDCG@100 vs the teacher."""
    n_valid = r.valid.sum(axis=1)
    teacher_rank = np.argsort(_order(r.teacher_scores, r.valid), axis=1)  # (R, K) 0 = best
    in_teacher_top = (teacher_rank < TEACHER_TOP) & r.valid
    student_top = np.take_along_axis(in_teacher_top, _order(student, r.valid)[:, :KEEP], axis=1)
    wanted = np.minimum(TEACHER_TOP, n_valid)
    gain = np.where(in_teacher_top, TEACHER_TOP - teacher_rank, 0).astype(np.float64)
    discount = 1 / np.log2(np.arange(2, TEACHER_TOP + 2))
    dcg = np.take_along_axis(gain, _order(student, r.valid)[:, :TEACHER_TOP], 1) * discount
    ideal = (
        np.take_along_axis(gain, _order(r.teacher_scores, r.valid)[:, :TEACHER_TOP], 1) * discount
    )
    return {
        "teacher_top100_recall_at_500": float(np.mean(student_top.sum(axis=1) / wanted)),
        "ndcg100_vs_teacher": float(np.mean(dcg.sum(axis=1) / ideal.sum(axis=1))),
    }


def ndcg10(order: np.ndarray, r: Requests, users: np.ndarray) -> float:
    """NDCG@10 of a per-request order (R, >=10) on true labels, over `users` rows."""
    hits = np.take_along_axis(r.labels > 0, order[:, :10], axis=1)[users]
    n_relevant = (r.labels > 0).sum(axis=1)[users]
    return float(np.mean(metrics.ndcg_at_k(hits, n_relevant, 10)))


def cascade_order(student: np.ndarray, r: Requests) -> np.ndarray:
    """The student's top-500 re-ordered by the teacher: what rank would answer."""
    top = _order(student, r.valid)[:, :KEEP]
    teacher = np.take_along_axis(np.where(r.valid, r.teacher_scores, -np.inf), top, axis=1)
    return np.take_along_axis(top, np.argsort(-teacher, axis=1, kind="stable"), axis=1)


def true_label_quality(scores: np.ndarray, r: Requests) -> dict:
    rows = np.repeat(r.user_ids[:, None], r.item_ids.shape[1], axis=1)[r.valid]
    labels, values = r.labels[r.valid] > 0, scores[r.valid]
    return {"AUC": metrics.auc(labels, values), "GAUC": metrics.gauc(rows, labels, values)}


def evaluate_dataset(name: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    world = open_world(name, args.data_dir, args.artifacts, args.bundle.format(dataset=name))
    config = DistillConfig(max_users=args.max_users)
    train = training_requests(world, config)
    test = test_requests(world, config.candidates_per_request, args.max_users)
    world.merger.close()
    users = np.flatnonzero(test.labels.sum(axis=1) > 0)  # requests with a positive candidate
    teacher = teacher_embeddings(world.bundle.load_npz("rank", "weights.npz"))
    recall_scores = -np.broadcast_to(np.arange(test.item_ids.shape[1]), test.item_ids.shape)
    recall_scores = recall_scores.astype(np.float32)
    rows = [
        {
            "model": "teacher (rank) on all recall candidates",
            **true_label_quality(test.teacher_scores, test),
            "own_top10_ndcg10": ndcg10(_order(test.teacher_scores, test.valid), test, users),
        },
        {
            "model": "recall order",
            **true_label_quality(recall_scores, test),
            **agreement(recall_scores, test),
            "own_top10_ndcg10": ndcg10(_order(recall_scores, test.valid), test, users),
            "end_to_end_ndcg10": ndcg10(cascade_order(recall_scores, test), test, users),
        },
    ]
    for variant in VARIANTS:
        model, info = train_student(
            train, world.dataset, world.spec, variant_config(variant, config), teacher
        )
        scores = student_scores(model, world.dataset, world.spec, test)
        rows.append(
            {
                "model": f"student: {variant}",
                **true_label_quality(scores, test),
                **agreement(scores, test),
                "own_top10_ndcg10": ndcg10(_order(scores, test.valid), test, users),
                "end_to_end_ndcg10": ndcg10(cascade_order(scores, test), test, users),
                "train_seconds": info["seconds"],
            }
        )
        log.info("%s %s", name, rows[-1])
    spread = [np.std(t[v]) for t, v in zip(train.teacher_logits, train.valid, strict=True)]
    return {
        "dataset": name,
        "bundle": world.bundle.version,
        "teacher_version": world.bundle.component("rank")["version"],
        "train_requests": int(len(train.user_ids)),
        "train_rows": int(train.valid.sum()),
        "train_positive_rate": float(train.labels[train.valid].mean()),
        "teacher_logit_std_within_request": float(np.mean(spread)),
        "test_requests": int(len(test.user_ids)),
        "test_requests_with_a_positive": int(len(users)),
        "mean_candidates": float(test.valid.sum(axis=1).mean()),
        "test_positive_rate": float(test.labels[test.valid].mean()),
        "users_sampled": bool(args.max_users and len(test.user_ids) == args.max_users),
        "config": {k: v for k, v in vars(config).items() if k != "student"},
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


COLUMNS = (
    ("AUC", "AUC"), ("GAUC", "GAUC"),
    ("teacher top-100 in top-500", "teacher_top100_recall_at_500"),
    ("NDCG@100 vs teacher", "ndcg100_vs_teacher"), ("own top-10 NDCG@10", "own_top10_ndcg10"),
    ("top-500 → teacher NDCG@10", "end_to_end_ndcg10"),
)  # fmt: skip


def markdown(reports: list[dict]) -> str:
    lines = [
        "# Pre-rank: distilled two-tower student vs labels only, over real recall candidates",
        "",
    ]
    for report in reports:
        lines += [
            f"## {report['dataset']} (bundle {report['bundle']}, "
            f"teacher {report['teacher_version']})",
            "",
            f"Test: {report['test_requests']} requests at each user's cut"
            + (" (seeded sample)" if report["users_sampled"] else "")
            + f", {report['mean_candidates']:.0f} recall candidates each, "
            f"{report['test_requests_with_a_positive']} with a test-period play among them "
            f"(NDCG@10 is over those). Training: {report['train_requests']} requests, "
            f"{report['train_rows']} labelled candidates.",
            "",
            "| model | " + " | ".join(c for c, _ in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        for row in report["rows"]:
            cells = ["-" if row.get(key) is None else f"{row[key]:.4f}" for _, key in COLUMNS]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "'own top-10': the row's own order. 'top-500 → teacher': its top-500 re-ordered by the "
            "teacher (what rank would answer); the teacher over all recall candidates is its own "
            f"top-10. Teacher logit spread within a training request (std): "
            f"{report['teacher_logit_std_within_request']:.3f}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", nargs="+", default=["ml-100k"], help="datasets to evaluate (default: ml-100k)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="where bundles live (default: artifacts)",
    )
    parser.add_argument("--bundle", default="{dataset}-v1", help="bundle version per dataset")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/run/prerank"),
        help="report folder (default: data/run/prerank; the committed one is results/prerank)",
    )
    parser.add_argument("--max-users", type=int, default=3000, help="seeded sample above this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    reports = [evaluate_dataset(name, args) for name in args.dataset]
    args.out.mkdir(parents=True, exist_ok=True)
    for report in reports:  # one pair of files per dataset, so datasets can run apart
        stem = args.out / f"prerank_{report['dataset']}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown([report]))
    print(markdown(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
