"""The relevance-diversity trade-off of rerank on the test period (per-user temporal protocol).

For each test user: a ranked list of 100 candidates, then a page of 10 from no rerank, MMR and DPP
across their trade-off parameter. The rank stage is not built yet, so the ranked list is EASE's
(cascade.baselines.EASE, fit on the training period) top 100 over the items the user has not
consumed in training; a later issue swaps in the real ranker. Business rules are off here so the
frontier shows the diversity methods alone; the kernel is the served one (RerankConfig defaults).

    python -m services.rerank.evaluate --dataset ml-100k synthetic --out results/rerank
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cascade.baselines import EASE
from cascade.candidates import Candidates
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.evaluation import UserItems
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import build_spec
from cascade.files import with_other_datasets
from cascade.metrics import ild_cosine, ild_jaccard, ndcg_at_k, top_k
from cascade.progress import track
from services.rerank.reranker import RerankConfig, Reranker
from services.rerank.rules import Rules
from services.rerank.train import item_embeddings

N_CANDIDATES, PAGE = 100, 10
MMR_LAMBDAS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.3)
DPP_THETAS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)
RULES_OFF = Rules(max_per_creator=0, max_category_share=1.0, fresh_slots=0, filter_consumed=False)
TARGET_ILD_GAIN, TARGET_NDCG_LOSS = 0.20, 0.02


def evaluate(name: str, data_dir: Path, max_users: int, seed: int = 0) -> dict:
    dataset = load_dataset(name, data_dir)
    parts = split_dataset(dataset)
    train, test = parts.train_interactions, parts.test_interactions
    n_users, n_items = dataset.n_users, dataset.n_items
    vectors = item_embeddings(train, n_users, n_items)
    store = InMemoryFeatureStore(dataset, build_spec(dataset), train)
    engine = Reranker(RerankConfig(rules=RULES_OFF), vectors, store)
    test_items = UserItems.from_table(test, n_users, n_items)
    users = np.flatnonzero(test_items.lengths() > 0)
    if len(users) > max_users:  # the page loop is per user: a seeded sample keeps it minutes
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    model = EASE().fit(train, n_users, n_items)
    candidate_blocks, score_blocks = [], []
    for start in range(0, len(users), 512):
        block = model.score(users[start : start + 512])
        block[model.history.dense(users[start : start + 512])] = -np.inf  # not consumed
        block[:, 0] = -np.inf
        best = top_k(block, N_CANDIDATES)
        candidate_blocks.append(best)
        score_blocks.append(np.take_along_axis(block, best, axis=1))
    candidates, scores = np.concatenate(candidate_blocks), np.concatenate(score_blocks)
    relevant = test_items.dense(users)
    n_relevant = test_items.lengths()[users]
    categories = np.zeros((n_items, dataset.items["categories"].shape[1]), dtype=np.int64)
    categories[dataset.items["item_id"]] = dataset.items["categories"]
    creators = np.zeros(n_items, dtype=np.int64)
    creators[dataset.items["item_id"]] = dataset.items["creator_id"]
    settings = [("none", None)] + [("mmr", v) for v in MMR_LAMBDAS]
    settings += [("dpp", v) for v in DPP_THETAS]
    rows = []
    zero_masks = np.zeros(N_CANDIDATES, dtype=np.uint32)
    for method, trade_off in settings:
        pages = np.zeros((len(users), PAGE), dtype=np.int64)
        for row in track(range(len(users)), f"evaluate rerank {method}", "users"):
            listed = Candidates(
                candidates[row], scores[row].astype(np.float32), zero_masks, zero_masks
            )
            page = engine.rerank(listed, PAGE, method=method, trade_off=trade_off)
            pages[row] = page.candidates.item_ids
        hits = np.take_along_axis(relevant, pages, axis=1)
        page_categories = categories[pages].reshape(len(users), -1)
        rows.append(
            {
                "method": method,
                "trade_off": trade_off,
                "NDCG@10": float(ndcg_at_k(hits, n_relevant, PAGE).mean()),
                "ILD_category": float(ild_jaccard(pages, categories).mean()),
                "ILD_embedding": float(ild_cosine(pages, vectors).mean()),
                "categories_per_page": float(
                    np.mean([len(set(r[r > 0].tolist())) for r in page_categories])
                ),
                "creators_per_page": float(
                    np.mean([len(set(r[r > 0].tolist())) for r in creators[pages]])
                ),
            }
        )
    return {"dataset": name, "n_test_users": int(len(users)), "rows": _with_target(rows)}


def _with_target(rows: list[dict]) -> list[dict]:
    base = rows[0]
    for row in rows:
        row["NDCG_change"] = row["NDCG@10"] / base["NDCG@10"] - 1 if base["NDCG@10"] else 0.0
        for ild in ("ILD_category", "ILD_embedding"):
            row[f"{ild}_change"] = row[ild] / base[ild] - 1
        row["meets_target"] = {
            ild: bool(
                row["method"] == "dpp"
                and row[f"{ild}_change"] >= TARGET_ILD_GAIN
                and row["NDCG_change"] >= -TARGET_NDCG_LOSS
            )
            for ild in ("ILD_category", "ILD_embedding")
        }
    return rows


def verdict(result: dict, ild: str) -> str:
    dpp = [r for r in result["rows"] if r["method"] == "dpp"]
    passing = [r for r in dpp if r["meets_target"][ild]]
    if passing:
        best = max(passing, key=lambda r: r[f"{ild}_change"])
        return (
            f"holds: DPP theta={best['trade_off']} raises {ild} by "
            f"{best[f'{ild}_change']:+.1%} at {best['NDCG_change']:+.1%} NDCG@10"
        )
    within = [r for r in dpp if r["NDCG_change"] >= -TARGET_NDCG_LOSS]
    best = max(within, key=lambda r: r[f"{ild}_change"]) if within else None
    if best is None:
        return "misses: every DPP setting loses more than 2% NDCG@10"
    return (
        f"misses: within 2% NDCG@10 loss the best DPP (theta={best['trade_off']}) raises {ild} "
        f"by {best[f'{ild}_change']:+.1%} ({TARGET_ILD_GAIN - best[f'{ild}_change']:.1%} short)"
    )


def markdown(results: list[dict]) -> str:
    lines = ["# Rerank: relevance-diversity trade-off (page of 10 from EASE's top 100)", ""]
    for result in results:
        lines += [f"## {result['dataset']} ({result['n_test_users']} test users)", ""]
        lines += [
            "| method | trade-off | NDCG@10 | ΔNDCG | ILD cat (Jaccard) | ΔILD cat | "
            "ILD emb (cosine) | ΔILD emb | categories/page | creators/page |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            lines.append(
                f"| {r['method']} | {r['trade_off'] if r['trade_off'] is not None else '-'} | "
                f"{r['NDCG@10']:.4f} | {r['NDCG_change']:+.1%} | {r['ILD_category']:.3f} | "
                f"{r['ILD_category_change']:+.1%} | {r['ILD_embedding']:.3f} | "
                f"{r['ILD_embedding_change']:+.1%} | {r['categories_per_page']:.2f} | "
                f"{r['creators_per_page']:.2f} |"
            )
        lines += ["", f"- Target on category ILD: {verdict(result, 'ILD_category')}"]
        lines += [f"- Target on embedding ILD: {verdict(result, 'ILD_embedding')}", ""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        base = result["rows"][0]
        for method, marker in (("mmr", "s-"), ("dpp", "o-")):
            rows = [r for r in result["rows"] if r["method"] == method]
            axis.plot(
                [r["ILD_category"] for r in rows],
                [r["NDCG@10"] for r in rows],
                marker,
                label=method.upper(),
            )
            for r in rows:
                axis.annotate(f"{r['trade_off']}", (r["ILD_category"], r["NDCG@10"]), fontsize=7)
        axis.plot(base["ILD_category"], base["NDCG@10"], "k*", markersize=12, label="no rerank")
        axis.axhline(base["NDCG@10"] * (1 - TARGET_NDCG_LOSS), color="grey", ls=":", lw=1)
        axis.axvline(base["ILD_category"] * (1 + TARGET_ILD_GAIN), color="grey", ls=":", lw=1)
        axis.set(title=result["dataset"], xlabel="ILD (categories, 1 - Jaccard)", ylabel="NDCG@10")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
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
        "--out",
        type=Path,
        default=Path("data/run/rerank"),
        help="report folder (default: data/run/rerank; the committed one is results/rerank)",
    )
    parser.add_argument(
        "--max-users",
        type=int,
        default=2000,
        help="seeded sample of test users above this (default: 2000)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [evaluate(name, args.data_dir, args.max_users) for name in args.dataset]
    results = with_other_datasets(args.out / "tradeoff.json", results)  # the others' are kept
    (args.out / "tradeoff.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (args.out / "tradeoff.md").write_text(text)
    plot(results, args.out / "frontier.png")
    print(text)


if __name__ == "__main__":
    main()
