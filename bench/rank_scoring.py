"""Rank scoring cost per request: torch eager vs ONNX Runtime, 100 and 500 candidates.

    python -m bench.rank_scoring --artifacts artifacts [--bundle current]

Each request: one user, n random catalog items; both paths include building the rows from the
feature store (what the server does), then run the same trained model, 1 intra-op thread (ONNX
Runtime also with 2). Writes results/rank/bench_scoring.json and .png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cascade.artifacts import Bundle
from cascade.data import load_dataset
from cascade.data.split import split_dataset
from cascade.rows import input_names, online_rows
from services.rank.export import load_torch
from services.rank.scorer import RankScorer, ScorerSettings
from services.rank.server import RankSettings, load_scorer


def _timed(fn, requests, warmup: int = 20) -> np.ndarray:
    for user, items in requests[:warmup]:
        fn(user, items)
    times = []
    for user, items in requests:
        started = time.perf_counter()
        fn(user, items)
        times.append(time.perf_counter() - started)
    return np.array(times) * 1e3  # ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("results/rank"))
    args = parser.parse_args(argv)
    settings = RankSettings(data_dir=args.data_dir, artifacts=args.artifacts, bundle=args.bundle)
    one = load_scorer(settings)
    two = RankScorer.from_bundle(
        Bundle.open(args.artifacts, args.bundle), one.store, ScorerSettings(intra_op_threads=2)
    )
    torch.set_num_threads(1)
    model = load_torch(Bundle.open(args.artifacts, args.bundle))
    names = input_names(one.store.spec)

    @torch.no_grad()
    def torch_score(user, items):
        rows = online_rows(one.store, user, items)
        return model(*(torch.from_numpy(rows[n]) for n in names)).numpy()

    rng = np.random.default_rng(0)
    catalog = np.flatnonzero(one.store.known_items(np.arange(200_000)))
    users = np.flatnonzero(one.store.history(np.arange(1, 100_000))[:, 0] > 0) + 1
    results = []
    for n in (100, 500):
        requests = [
            (int(rng.choice(users)), rng.choice(catalog, n, replace=False))
            for _ in range(args.requests)
        ]
        for name, fn in (
            ("torch eager, 1 thread", torch_score),
            ("ONNX Runtime, 1 thread", one.score),
            ("ONNX Runtime, 2 threads", two.score),
        ):
            ms = _timed(fn, requests)
            results.append(
                {
                    "candidates": n,
                    "path": name,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "requests": len(ms),
                }
            )
            print(
                f"{n:4d} candidates  {name:24s} p50 {results[-1]['p50_ms']:.3f} ms  "
                f"p99 {results[-1]['p99_ms']:.3f} ms"
            )
    for n in (100, 500):
        by = {r["path"]: r for r in results if r["candidates"] == n}
        ratio = by["torch eager, 1 thread"]["p50_ms"] / by["ONNX Runtime, 1 thread"]["p50_ms"]
        print(f"{n:4d} candidates  torch / ONNX Runtime (1 thread) p50 ratio: {ratio:.2f}x")
    labelling = _labelling(one, settings)
    print(f"teacher labelling (RankScorer.label, 1 thread): {labelling['rows_per_s']:,.0f} rows/s")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "bundle": str(one.version),
        "dataset": _dataset_of(settings),
        "results": results,
        "teacher_labelling": labelling,
    }
    (args.out / "bench_scoring.json").write_text(json.dumps(report, indent=2))
    _plot(results, args.out / "bench_scoring.png")


def _dataset_of(settings: RankSettings) -> str:
    return Bundle.open(settings.artifacts, settings.bundle).component("rank")["dataset"]


def _labelling(scorer: RankScorer, settings: RankSettings, n: int = 200_000) -> dict:
    """Bulk teacher labels of test-period impressions, history as of each impression."""
    data = split_dataset(load_dataset(_dataset_of(settings), settings.data_dir))
    rows = {k: v[:n] for k, v in data.test_impressions.items()}
    started = time.perf_counter()
    scorer.label(rows["user_id"], rows["item_id"], rows["ts"], data.train_interactions)
    seconds = time.perf_counter() - started
    return {"rows": len(rows["ts"]), "seconds": seconds, "rows_per_s": len(rows["ts"]) / seconds}


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(r["path"] for r in results))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ticks, labels = [], []
    for i, n in enumerate((100, 500)):
        rows = [next(r for r in results if r["candidates"] == n and r["path"] == p) for p in paths]
        x = np.arange(len(paths)) + i * (len(paths) + 1)
        p50 = [r["p50_ms"] for r in rows]
        ax.bar(x, p50, color=["tab:red", "tab:blue", "tab:cyan"])
        tail = [r["p99_ms"] - r["p50_ms"] for r in rows]
        ax.errorbar(x, p50, yerr=[[0] * len(rows), tail], fmt="none", ecolor="black", capsize=3)
        ticks += list(x)
        labels += [f"{n}: {p.replace(', ', chr(10))}" for p in paths]
    ax.set_xticks(ticks, labels, fontsize=6)
    ax.set_ylabel("ms per request (bar p50, whisker p99)")
    ax.set_title("Rank scoring per request: torch eager vs ONNX Runtime")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
