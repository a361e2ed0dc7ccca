"""Offline quality of the two-tower alone, trained with and without logQ correction.

    python -m services.recall.evaluate_two_tower --datasets ml-100k synthetic --out results/recall

Per-user temporal split; every evaluated user is ranked against all items (training items
excluded) by user vector . item vector, where the user vector sees the profile and the history at
the end of the training period. Both variants use the same seed and config otherwise. Writes
two_tower.json and two_tower.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cascade.data import load_dataset
from cascade.data.schema import Dataset, Table
from cascade.data.split import per_user_temporal, take
from cascade.evaluation import evaluate_ranking
from cascade.features import build_spec, history_before
from cascade.files import with_other_datasets
from services.recall.two_tower import Batcher, TwoTowerConfig, train_two_tower, user_vectors

KS = (10, 100, 500, 2000)
REPORTED = ("Recall@100", "Recall@500", "Recall@2000", "NDCG@10")
CONFIGS = {  # epochs per dataset: a few minutes of CPU each, see the JSON for the losses
    "ml-100k": TwoTowerConfig(epochs=10),
    "synthetic": TwoTowerConfig(epochs=8),
}


def evaluate_model(model, dataset: Dataset, train: Table, test: Table) -> dict[str, float]:
    """Full-ranking metrics of one trained two-tower on the test period."""
    batcher = Batcher(dataset, model.spec)
    item_vectors = model.item_vectors  # (n_items, dim), row 0 zeros
    length = model.spec.history_length

    def score(users: np.ndarray) -> np.ndarray:
        histories = history_before(train, users, np.full(len(users), 2**32), length)
        return user_vectors(model, batcher, users, histories) @ item_vectors.T

    return evaluate_ranking(score, train, test, dataset.n_items, KS)


def run(dataset_name: str, data_dir: Path, config: TwoTowerConfig, progress: bool) -> list[dict]:
    dataset = load_dataset(dataset_name, data_dir)
    test_mask = per_user_temporal(dataset.interactions)
    train, test = take(dataset.interactions, ~test_mask), take(dataset.interactions, test_mask)
    spec = build_spec(dataset)
    rows = []
    for logq in (True, False):
        variant = replace(config, logq_correction=logq)
        started = time.perf_counter()
        model = train_two_tower(dataset, train, spec, variant, progress=progress)
        metrics = evaluate_model(model, dataset, train, test)
        rows.append(
            {
                "dataset": dataset_name,
                "protocol": "per_user",
                "model": "two_tower" + ("+logQ" if logq else ""),
                "logq_correction": logq,
                "n_test_users": metrics["n_test_users"],
                **{name: round(metrics[name], 4) for name in REPORTED},
                "Coverage@100": round(metrics["Coverage@100"], 4),
                "train_loss_per_epoch": model.metrics["train_loss_per_epoch"],
                "seconds": round(time.perf_counter() - started, 1),
                "config": model.metrics["config"],
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Two-tower retrieval alone: with vs without logQ correction",
        "",
        "Per-user temporal split (last 20% of each user's interactions by time is test); full "
        "ranking against all items, training items excluded; same seed and config per dataset.",
        "",
        "| dataset | model | users | " + " | ".join(REPORTED) + " | Coverage@100 | train s |",
        "|---|---|---|" + "---|" * (len(REPORTED) + 2),
    ]
    for row in rows:
        values = " | ".join(f"{row[name]:.4f}" for name in REPORTED)
        lines.append(
            f"| {row['dataset']} | {row['model']} | {row['n_test_users']} | {values} | "
            f"{row['Coverage@100']:.4f} | {row['seconds']} |"
        )
    if any(row["dataset"] == "ml-100k" for row in rows):
        lines += ["", "ml-100k has 1,682 items, so any full ranking reaches Recall@2000 = 1 there."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
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
        default=Path("data/run/recall"),
        help="report folder (default: data/run/recall; the committed one is results/recall)",
    )
    parser.add_argument("--epochs", type=int, default=0, help="override the per-dataset epochs")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        config = CONFIGS.get(name, TwoTowerConfig())
        if args.epochs:
            config = replace(config, epochs=args.epochs)
        rows += run(name, args.data_dir, config, progress=not args.quiet)
    rows = with_other_datasets(args.out / "two_tower.json", rows)  # the others' are kept
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "two_tower.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "two_tower.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
