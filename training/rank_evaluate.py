"""Ablation report of the ranker: every variant on the same split, rows and seed.

    python -m training.rank_evaluate --dataset ml-100k synthetic --out results/rank

Per dataset and row: AUC, GAUC and logloss per task on the test period's impressions, and the
cascade measure: NDCG@10 of re-ranking EASE's top-100 candidates per test user by the model
(relevance = the user's test-period plays; a second column for likes) next to EASE's own order;
on the synthetic world also the mean true utility of the top 10 (from its ground truth).
Rows: DeepFM alone, + per-field widths, + attention, + PLE (the full model), the full model
trained on one task at a time, and logistic regression on the same features.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cascade import metrics
from cascade.baselines import EASE
from cascade.data import load_dataset
from cascade.data.synthetic import true_utility
from cascade.evaluation import UserItems
from cascade.rows import Rows
from services.rank.baseline import LogisticRegression
from services.rank.model import ModelConfig
from services.rank.train import Prepared, TrainConfig, evaluate, fit, predict
from training.rank_train import prepare

log = logging.getLogger(__name__)

CANDIDATES = 100
K = 10
ABLATIONS = {
    "DeepFM": ModelConfig(per_field_widths=False, attention=False, ple=False),
    "+ per-field widths": ModelConfig(attention=False, ple=False),
    "+ attention": ModelConfig(ple=False),
    "+ PLE (full)": ModelConfig(),
}
# Bounded so that both sources run in minutes on 2 cores; rows are subsampled with fixed seeds.
REPORT = {
    "ml-100k": TrainConfig(max_epochs=5, batch_size=2048, max_train_rows=400_000),
    "synthetic": TrainConfig(
        max_epochs=4, batch_size=2048, max_train_rows=400_000, max_test_rows=250_000
    ),
}
NDCG_USERS = 3000  # test users sampled (seeded) for the candidate re-ranking measure


class Candidates:
    """EASE's top-100 per sampled test user, their rows and their relevance labels."""

    def __init__(self, prepared: Prepared, seed: int = 0, n_candidates: int = CANDIDATES):
        data, dataset = prepared.split, prepared.dataset
        n_users, n_items = dataset.n_users, dataset.n_items
        seen = UserItems.from_table(data.train_interactions, n_users, n_items)
        test = data.test_interactions
        plays = UserItems.from_table(test, n_users, n_items)
        likes = UserItems.from_table(
            {k: v[test["like"]] for k, v in test.items()}, n_users, n_items
        )
        users = np.flatnonzero((seen.lengths() > 0) & (plays.lengths() > 0))
        if len(users) > NDCG_USERS:
            users = np.sort(np.random.default_rng(seed).choice(users, NDCG_USERS, replace=False))
        ease = EASE().fit(data.train_interactions, n_users, n_items)
        scores = ease.score(users)  # (u, n_items)
        scores[:, 0] = -np.inf
        scores[seen.pairs(users)] = -np.inf
        self.items = metrics.top_k(scores, n_candidates)  # (u, n_candidates), EASE order
        self.users = users
        self.relevance = {}
        for name, table in (("plays", plays), ("likes", likes)):
            relevant = table.dense(users) & ~seen.dense(users)  # seen items cannot be hit
            self.relevance[name] = (
                np.take_along_axis(relevant, self.items, axis=1),
                relevant.sum(axis=1),
            )
        self.utility = _true_utility(dataset, users, self.items) if dataset.truth else None
        flat_users = np.repeat(users, self.items.shape[1])
        # Serving time is after the training period: the history is the whole training log.
        self.rows: Rows = prepared.offline.rows(
            flat_users, self.items.reshape(-1), np.full(len(flat_users), 2**32)
        )

    def ndcg(self, scores: np.ndarray | None) -> dict[str, float]:
        """NDCG@10 per relevance kind for the candidates sorted by `scores` (None: EASE order)."""
        result = {}
        for name, (hits, n_relevant) in self.relevance.items():
            if scores is not None:
                order = np.argsort(-scores.reshape(hits.shape), axis=1, kind="stable")
                hits = np.take_along_axis(hits, order, axis=1)
            valid = n_relevant > 0
            value = metrics.ndcg_at_k(hits[valid], n_relevant[valid], K).mean()
            result[f"NDCG@{K} {name}"] = float(value)
        if self.utility is not None:
            utility = self.utility
            if scores is not None:
                order = np.argsort(-scores.reshape(utility.shape), axis=1, kind="stable")
                utility = np.take_along_axis(utility, order, axis=1)
            result[f"true utility@{K}"] = float(utility[:, :K].mean())
        return result


def _true_utility(dataset, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(u, c) the synthetic world's utility of each candidate, the follow bonus left out: what
    users would value, free of the logging policy's exposure bias that the logged plays carry.
    Evaluation only, never a feature."""
    creator = np.zeros(dataset.n_items, dtype=np.int64)
    creator[dataset.items["item_id"]] = dataset.items["creator_id"]
    return true_utility(dataset.truth, users[:, None], items, creator[items])


def _row(name, model, prepared, tasks, candidates, fusion, info) -> dict:
    rows, impressions = prepared.test
    per_task = evaluate(predict(model, rows, prepared.spec), impressions, tasks)
    probabilities = predict(model, candidates.rows, prepared.spec)
    fused = probabilities @ np.array([fusion.get(t, 1.0) for t in tasks], dtype=np.float32)
    row = {"model": name, "tasks": list(tasks), "metrics": per_task, **candidates.ndcg(fused)}
    row.update({"epochs": len(info["epochs"]), "train_seconds": info["seconds"]})
    return row


def run(dataset_name: str, data_dir: Path) -> dict:
    dataset = load_dataset(dataset_name, data_dir)
    config = REPORT[dataset_name]
    started = time.perf_counter()
    prepared = prepare(dataset, config)
    tasks = tuple(dataset.meta["tasks"])
    candidates = Candidates(prepared)
    ease_row = {"model": "EASE order (candidates as given)", **candidates.ndcg(None)}
    rows = []
    for name, model_config in ABLATIONS.items():
        model, info = fit(prepared, tasks, model_config, config)
        rows.append(_row(name, model, prepared, tasks, candidates, config.fusion, info))
        log.info("%s %s: %s", dataset_name, name, rows[-1])
    for task in tasks:
        model, info = fit(prepared, (task,), ModelConfig(), config)
        rows.append(_row(f"single-task {task}", model, prepared, (task,), candidates, {}, info))
    torch.manual_seed(config.seed)
    baseline = LogisticRegression(prepared.spec, tasks)
    _, info = fit(prepared, tasks, ModelConfig(), config, model=baseline)
    rows.append(
        _row("logistic regression", baseline, prepared, tasks, candidates, config.fusion, info)
    )
    return {
        "dataset": dataset_name,
        "tasks": list(tasks),
        "train_config": {k: v for k, v in vars(config).items()},
        "rows_train": len(prepared.train[1]["ts"]),
        "rows_validation": len(prepared.validation[1]["ts"]),
        "rows_test": len(prepared.test[1]["ts"]),
        "ndcg_users": len(candidates.users),
        "ease_order": ease_row,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(report: dict) -> str:
    tasks = report["tasks"]
    lines = [
        f"### {report['dataset']}",
        "",
        f"Train {report['rows_train']:,} / validation {report['rows_validation']:,} / test "
        f"{report['rows_test']:,} impressions; NDCG@{K} over EASE top-{CANDIDATES} for "
        f"{report['ndcg_users']:,} test users; {report['seconds']} s.",
        "",
    ]
    header = ["model"] + [f"{t} {m}" for t in tasks for m in ("AUC", "GAUC", "logloss")]
    header += [f"NDCG@{K} plays", f"NDCG@{K} likes"]
    extra = [f"true utility@{K}"] if f"true utility@{K}" in report["ease_order"] else []
    header += extra + ["epochs"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    for row in [report["ease_order"], *report["rows"]]:
        values = [row["model"]]
        for t in tasks:
            m = row.get("metrics", {}).get(t, {})
            values += [cell(m.get("AUC")), cell(m.get("GAUC")), cell(m.get("logloss"))]
        values += [cell(row.get(f"NDCG@{K} plays")), cell(row.get(f"NDCG@{K} likes"))]
        values += [cell(row.get(name)) for name in extra]
        values.append(cell(row.get("epochs")))
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rank ablation report")
    parser.add_argument(
        "--dataset",
        nargs="+",
        default=["ml-100k", "synthetic"],
        help="datasets to evaluate (default: ml-100k synthetic)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/run/rank"),
        help="report folder (default: data/run/rank; the committed one is results/rank)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.dataset:
        report = run(name, args.data_dir)
        (args.out / f"ablation_{name}.json").write_text(json.dumps(report, indent=2, default=str))
        text = markdown(report)
        (args.out / f"ablation_{name}.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
