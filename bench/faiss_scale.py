"""FAISS at catalog scale: exact vs IVF vs HNSW on 1M synthetic items, dim 64, top-500.

    python -m bench.faiss_scale --out results/recall

Vectors come from the synthetic world's own generator code (cascade.data.synthetic: users ->
creators -> items), run at 1M items with dim 64 and no exposure log: item vectors are the items'
latent taste vectors, queries are users' taste vectors, both L2-normalised like the two-tower's
outputs. Built with the index factory of services/recall/index.py; each index: build time (all
cores), memory (RSS growth and serialised size), single-query top-500 latency p50/p99 with one
FAISS thread, and recall@500 against exact search on the same queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np

from cascade.data.synthetic import SyntheticConfig, _creators, _items, _users
from services.recall.index import IndexSettings, build_index, search

BUILD_THREADS = faiss.omp_get_max_threads()  # all cores for builds; searches use one thread


def synthetic_vectors(n_items: int, dim: int, n_queries: int, seed: int):
    """(items (n_items, dim), queries (n_queries, dim)), unit length, from the generator."""
    config = SyntheticConfig(n_users=max(n_queries, n_items // 10), n_items=n_items, dim=dim)
    config = replace(config, seed=seed)
    users, user_truth = _users(config)
    _, creator_truth = _creators(config, user_truth)
    _, item_truth = _items(config, creator_truth)
    items = item_truth["item_latent"][1:]
    queries = user_truth["user_taste"][1 : n_queries + 1]
    unit = [
        np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True), np.float32)
        for v in (items, queries)
    ]
    return unit[0], unit[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def latencies_ms(
    index: faiss.Index, queries: np.ndarray, k: int, settings: IndexSettings
) -> np.ndarray:
    """One query at a time, as the channel searches."""
    times = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        search(index, queries[i : i + 1], k, settings)
        times[i] = time.perf_counter() - start
    return times * 1000


def recall_against(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = [
        len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits) / k)


def measure(kind, settings, items, queries, exact_ids, k, search_variants) -> list[dict]:
    faiss.omp_set_num_threads(BUILD_THREADS)
    start = time.perf_counter()
    index = build_index(items, settings, kind=kind)
    build_s = time.perf_counter() - start
    # Flat, IVF-Flat and HNSW-Flat hold the same bytes in memory as in their file.
    memory = {"index_mib": round(faiss.serialize_index(index).nbytes / 2**20, 1)}
    rows = []
    for label, variant in search_variants:
        faiss.omp_set_num_threads(1)
        times = latencies_ms(index, queries, k, variant)
        found, _ = search(index, queries, k, variant)
        rows.append(
            {
                "index": kind,
                "search": label,
                "build_s": round(build_s, 1),
                **memory,
                "p50_ms": round(float(np.percentile(times, 50)), 3),
                "p99_ms": round(float(np.percentile(times, 99)), 3),
                f"recall@{k}": round(recall_against(found, exact_ids), 4)
                if exact_ids is not None
                else 1.0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    del index
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/recall"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    items, queries = synthetic_vectors(args.items, args.dim, args.queries, args.seed)
    generate_s = time.perf_counter() - started
    print(
        f"vectors: {items.shape} items, {queries.shape} queries in {generate_s:.1f} s", flush=True
    )
    k = args.k
    base = IndexSettings(exact_threshold=0)
    flat_rows = measure("flat", base, items, queries, None, k, [("exact", base)])
    faiss.omp_set_num_threads(BUILD_THREADS)
    exact_ids, _ = search(build_index(items, base, kind="flat"), queries, k)
    ivf = replace(base, ivf_nlist=1024)
    ivf_rows = measure(
        "ivf",
        ivf,
        items,
        queries,
        exact_ids,
        k,
        [(f"nprobe {p}", replace(ivf, ivf_nprobe=p)) for p in (16, 64)],
    )
    hnsw_rows = measure(
        "hnsw",
        base,
        items,
        queries,
        exact_ids,
        k,
        [(f"efSearch {e}", replace(base, hnsw_ef_search=e)) for e in (512, 1024)],
    )
    result = {
        "vectors": "synthetic generator latents (items: item_latent, queries: user_taste), "
        "unit length",
        "n_items": args.items,
        "dim": args.dim,
        "k": k,
        "n_queries": args.queries,
        "generate_s": round(generate_s, 1),
        "ivf_settings": {"nlist": 1024, "train_size": base.ivf_train_size},
        "hnsw_settings": {"M": base.hnsw_m, "efConstruction": base.hnsw_ef_construction},
        "machine": {
            "build_threads": BUILD_THREADS,
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "faiss": faiss.__version__,
        "peak_rss_mib": round(peak_rss_mib()),
        "rows": flat_rows + ivf_rows + hnsw_rows,
        "total_s": round(time.perf_counter() - started, 1),
        "settings_default": asdict(IndexSettings()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faiss_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    header = f"| index | search | build s | index MiB | p50 ms | p99 ms | recall@{k} |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(
            f"| {row['index']} | {row['search']} | {row['build_s']} | {row['index_mib']} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {row[f'recall@{k}']} |"
        )
    (args.out / "faiss_scale.md").write_text(
        f"# FAISS at {args.items:,} items, dim {args.dim}, top-{k}\n\n{result['vectors']}; "
        f"{args.queries} single queries, 1 FAISS thread.\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
