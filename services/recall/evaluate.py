"""The recall report: Recall@K of each channel alone and of the merged set, against baselines.

    python -m services.recall.evaluate --dataset ml-100k synthetic --out results/recall

Per-user temporal split. Each dataset gets a bundle built by services.recall.train from the
training part (kept under --artifacts as version eval-<dataset>), opened through the serving code
(the same channels and merge as the server). A user is asked at the time of their first test event,
with their training history as context; relevant items are their test items not seen in training
(as in cascade.evaluation). Baselines (MostPopular, ItemKNN, EASE) rank all items minus training
items. The two-tower with vs without logQ comes from services.recall.evaluate_two_tower's JSON.
Writes recall.json and recall.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cascade.artifacts import Bundle, BundleWriter
from cascade.baselines import EASE, ItemKNN, MostPopular
from cascade.candidates import channel_bit
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.evaluation import UserItems
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from cascade.progress import track
from services.recall.channels import RecallContext
from services.recall.merge import Merger
from services.recall.server import RecallSettings, build_channels
from services.recall.tables import load_tables
from services.recall.train import build_recall

KS = (100, 500, 2000)


def evaluate_dataset(
    name: str,
    data_dir: Path,
    artifacts: Path,
    max_users: int,
    epochs: int | None,
    reuse: bool = False,
) -> dict:
    import torch  # offline only: training threads

    from services.recall.evaluate_two_tower import CONFIGS
    from services.recall.two_tower import TwoTowerConfig

    torch.set_num_threads(1)
    dataset = load_dataset(name, data_dir)
    parts = split_dataset(dataset)
    train, impressions, test = (
        parts.train_interactions,
        parts.train_impressions,
        parts.test_interactions,
    )
    n_items = dataset.n_items
    started = time.perf_counter()
    config = CONFIGS.get(name, TwoTowerConfig())  # the same training as the two-tower report
    if epochs:
        config = replace(config, epochs=epochs)
    if not (reuse and (artifacts / f"eval-{name}" / "manifest.json").exists()):
        writer = BundleWriter(artifacts, f"eval-{name}")
        build_recall(dataset, train, writer, two_tower_config=config, progress=False)
    build_seconds = time.perf_counter() - started
    bundle = Bundle.open(artifacts, f"eval-{name}")
    store = InMemoryFeatureStore(dataset, build_spec(dataset), train, impressions)
    settings = RecallSettings()
    channels = build_channels(bundle, load_tables(bundle), store, settings)
    # No timeouts offline: quality, not latency, is measured here.
    budgets = {k: replace(b, budget_ms=60_000.0) for k, b in settings.budgets().items()}
    merger = Merger(channels, budgets, overfetch=settings.overfetch)

    seen = UserItems.from_table(train, dataset.n_users, n_items)
    relevant = _relevant(train, test, dataset.n_users, n_items)
    users = np.flatnonzero((seen.lengths() > 0) & (relevant.lengths() > 0))
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(0).choice(users, max_users, replace=False))
    first_test = np.full(dataset.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_test, test["user_id"], test["ts"])

    names = [c.name for c in channels]
    hits = {f"{n}": np.zeros((len(users), len(KS))) for n in [*names, "merged"]}
    sizes = {n: np.zeros(len(users)) for n in names}
    fresh_share, tag_counts, pair_counts = (
        [],
        np.zeros(len(names)),
        np.zeros((len(names), len(names))),
    )
    bits = np.array([channel_bit(n) for n in names], dtype=np.uint32)
    upload_ts = np.zeros(n_items, dtype=np.int64)
    upload_ts[dataset.items["item_id"]] = dataset.items["upload_ts"]
    for row, user in enumerate(track(users, "evaluate recall", "users")):
        history = store.history(np.array([user]))[0]
        context = RecallContext(int(user), history[history > 0], int(first_test[user]), True)
        consumed = store.consumed(int(user))
        wanted = relevant.items[relevant.indptr[user] : relevant.indptr[user + 1]]
        for channel in channels:
            ids, _ = channel.retrieve(context, KS[-1] + len(consumed))
            ids = ids[~np.isin(ids, consumed)][: KS[-1]]
            sizes[channel.name][row] = len(ids)
            hits[channel.name][row] = [np.isin(wanted, ids[:k]).sum() for k in KS]
        for j, k in enumerate(KS):
            merged = merger.recall(context, k, consumed).candidates
            hits["merged"][row, j] = np.isin(wanted, merged.item_ids).sum()
        tagged = (merged.channel_masks[:, None] & bits[None, :]) > 0  # (n, channels), K = 2000
        tag_counts += tagged.sum(axis=0)
        pair_counts += tagged.T.astype(np.int64) @ tagged.astype(np.int64)
        fresh_window = settings.fresh_window_s
        age = context.request_ts - upload_ts[merged.item_ids]
        fresh_share.append(np.mean((age >= 0) & (age < fresh_window)) if len(age) else 0.0)
    merger.close()
    n_relevant = relevant.lengths()[users]
    rows = [
        {
            "source": n if n == "merged" else f"channel:{n}",
            **{f"Recall@{k}": float(np.mean(hits[n][:, j] / n_relevant)) for j, k in enumerate(KS)},
            "mean_candidates": float(sizes[n].mean()) if n in sizes else None,
        }
        for n in [*names, "merged"]
    ]
    rows += _baselines(train, users, relevant, dataset.n_users, n_items)
    overlap = {
        a: {
            b: round(float(pair_counts[i, j] / max(tag_counts[i], 1)), 4)
            for j, b in enumerate(names)
        }
        for i, a in enumerate(names)
    }
    return {
        "dataset": name,
        "protocol": "per_user_temporal",
        "n_users": int(len(users)),
        "users_sampled": bool(max_users and len(users) == max_users),
        "build_seconds": round(build_seconds, 1),
        "two_tower_epochs": config.epochs,
        "quotas": {k: b.quota for k, b in settings.budgets().items()},
        "rows": rows,
        "fresh_share_of_merged_2000": round(float(np.mean(fresh_share)), 4),
        "fresh_window_s": settings.fresh_window_s,
        "channel_overlap_of_merged_2000": overlap,
        "channel_share_of_merged_2000": {
            n: round(float(tag_counts[i] / max(len(users), 1) / KS[-1]), 4)
            for i, n in enumerate(names)
        },
    }


def _relevant(train, test, n_users: int, n_items: int) -> UserItems:
    test_keys = np.unique(test["user_id"] * n_items + test["item_id"])
    train_keys = np.unique(train["user_id"] * n_items + train["item_id"])
    keys = test_keys[~np.isin(test_keys, train_keys)]
    return UserItems.from_pairs(keys // n_items, keys % n_items, n_users, n_items)


def _baselines(train, users, relevant: UserItems, n_users: int, n_items: int) -> list[dict]:
    seen = UserItems.from_table(train, n_users, n_items)
    rows = []
    for model in (MostPopular(), ItemKNN(), EASE()):
        model.fit(train, n_users, n_items)
        hits = np.zeros((len(users), len(KS)))
        for start in range(0, len(users), 256):
            batch = users[start : start + 256]
            scores = np.array(model.score(batch), dtype=np.float32)
            scores[:, 0] = -np.inf
            scores[seen.pairs(batch)] = -np.inf
            top = np.argsort(-scores, axis=1, kind="stable")[:, : KS[-1]]
            wanted = relevant.dense(batch)
            found = np.take_along_axis(wanted, top, axis=1)
            hits[start : start + len(batch)] = [[f[:k].sum() for k in KS] for f in found]
        n_relevant = relevant.lengths()[users]
        recall = {f"Recall@{k}": float(np.mean(hits[:, j] / n_relevant)) for j, k in enumerate(KS)}
        rows.append({"source": f"baseline:{model.name}", **recall, "mean_candidates": None})
    return rows


def markdown(reports: list[dict], two_tower: list[dict]) -> str:
    lines = ["# Recall: channels alone, merged, and baselines at the same K", ""]
    for report in reports:
        lines += [
            f"## {report['dataset']} ({report['protocol']}, {report['n_users']} users"
            + (", sampled" if report["users_sampled"] else "")
            + ")",
            "",
            "| source | " + " | ".join(f"Recall@{k}" for k in KS) + " | mean candidates |",
            "|---|" + "---|" * (len(KS) + 1),
        ]
        for row in report["rows"]:
            size = "-" if row["mean_candidates"] is None else f"{row['mean_candidates']:.0f}"
            values = " | ".join(f"{row[f'Recall@{k}']:.4f}" for k in KS)
            lines.append(f"| {row['source']} | {values} | {size} |")
        lines += ["", f"Quotas: {report['quotas']}.", ""]
        lines.append(
            f"Share of fresh items (uploaded in the {report['fresh_window_s'] // 86400} days "
            f"before the request) in the merged 2,000: {report['fresh_share_of_merged_2000']:.4f}."
        )
        shares = report["channel_share_of_merged_2000"].items()
        lines += [
            "",
            "Channel share of the merged 2,000 (a candidate counts for each tag): "
            + ", ".join(f"{k} {v:.3f}" for k, v in shares),
            "",
        ]
        names = list(report["channel_overlap_of_merged_2000"])
        lines += [
            "Overlap (row's candidates also found by column):",
            "",
            "| | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for a in names:
            cells = " | ".join(
                f"{report['channel_overlap_of_merged_2000'][a][b]:.3f}" for b in names
            )
            lines.append(f"| {a} | {cells} |")
        lines.append("")
    lines += ["## Two-tower alone: with vs without logQ correction", ""]
    if two_tower:
        lines += [
            "| dataset | model | Recall@100 | Recall@500 | Recall@2000 |",
            "|---|---|---|---|---|",
        ]
        for row in two_tower:
            lines.append(
                f"| {row['dataset']} | {row['model']} | {row['Recall@100']:.4f} | "
                f"{row['Recall@500']:.4f} | {row['Recall@2000']:.4f} |"
            )
    else:
        lines.append("Not available: run `python -m services.recall.evaluate_two_tower` first.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="where bundles live (default: artifacts)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/run/recall"),
        help="report folder (default: data/run/recall; the committed one is results/recall)",
    )
    parser.add_argument("--max-users", type=int, default=3000, help="seeded sample above this")
    parser.add_argument("--epochs", type=int, default=0, help="override the two-tower epochs")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate ARTIFACTS/eval-<dataset> when it exists"
    )
    args = parser.parse_args(argv)
    reports = []
    for name in args.dataset:
        reports.append(
            evaluate_dataset(
                name, args.data_dir, args.artifacts, args.max_users, args.epochs or None, args.reuse
            )
        )
        print(
            json.dumps(
                {k: v for k, v in reports[-1].items() if k != "channel_overlap_of_merged_2000"},
                indent=1,
            ),
            flush=True,
        )
    two_tower_path = args.out / "two_tower.json"
    two_tower = json.loads(two_tower_path.read_text()) if two_tower_path.exists() else []
    # Datasets not run this time keep their reports from the previous run.
    previous = args.out / "recall.json"
    if previous.exists():
        ran = {r["dataset"] for r in reports}
        kept = [r for r in json.loads(previous.read_text())["reports"] if r["dataset"] not in ran]
        reports = sorted(kept + reports, key=lambda r: r["dataset"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall.json").write_text(
        json.dumps({"reports": reports, "two_tower_logq": two_tower}, indent=2) + "\n"
    )
    (args.out / "recall.md").write_text(markdown(reports, two_tower))
    print(markdown(reports, two_tower))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
