"""Cost of rerank selection: 20 of 100 and 50 of 500, p50/p99 (the floor on this kind of
machine: numpy MMR / DPP 20 of 100 in about 85 / 96 us), plus
the exactness check of the greedy DPP steps against brute force on small inputs.

    python -m bench.rerank_cost --out results/rerank
"""

from __future__ import annotations

import os

# One BLAS thread, as a serving process runs (one core per process); with the default
# pool the 500 x 500 kernel took ~32 ms p50 on this shared 2-core VM instead of ~6 ms.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path

import numpy as np  # noqa: E402

from services.rerank.dpp import DPPGreedy, log_det_gain
from services.rerank.mmr import MMRGreedy
from services.rerank.rules import PageRules, Rules, select_page
from services.rerank.similarity import SimilarityWeights, Workspace, item_similarity

# The floor of 20 of 100 on this kind of machine (numpy, µs p50 and p99), from earlier runs of this
# command; rows report their ratio to it (keys perf_notes_*, as in results/rerank/cost.json).
FLOOR_20_OF_100 = {"mmr": (85.0, 103.0), "dpp": (96.0, 116.0)}
NO_RULES = Rules(max_per_creator=0, max_category_share=1.0, fresh_slots=0)
RULES = Rules()  # served defaults: creator cap 2, category share 0.5


def _inputs(rng: np.random.Generator, n: int, dim: int = 32):
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    creators = rng.integers(1, n // 3, n)
    categories = np.zeros((n, 6), dtype=np.int64)
    categories[:, :2] = rng.integers(1, 20, (n, 2))
    relevance = np.sort(rng.random(n))[::-1]
    return vectors, creators, categories, relevance


def time_selection(method: str, n: int, k: int, rules: Rules, repeats: int, window: int = 0):
    """µs per page: the kernel build plus the greedy selection (what a request pays)."""
    rng = np.random.default_rng(0)
    workspace = Workspace()
    vectors, creators, categories, relevance = _inputs(rng, n)
    fresh = np.zeros(n, dtype=bool)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        similarity = item_similarity(vectors, creators, categories, SimilarityWeights(), workspace)
        if method == "dpp":
            factor = workspace.factor(max(window - 1, 1) if window else k, n)
            step = DPPGreedy(relevance, similarity, 0.7, k, window, factor)
        else:
            step = MMRGreedy(relevance, similarity, 0.7)
        select_page(step, relevance, PageRules(creators, categories, fresh, rules, k), k)
        times.append(time.perf_counter() - started)
    micros = np.asarray(times[repeats // 10 :]) * 1e6  # drop warm-up
    return float(np.median(micros)), float(np.percentile(micros, 99))


def exactness(trials: int = 200, n: int = 8, k: int = 4) -> dict:
    """Greedy steps equal to the brute-force best step, and det(greedy) / det(exact MAP)."""
    rng = np.random.default_rng(1)
    steps_ok = steps = 0
    ratios = []
    for _ in range(trials):
        vectors = rng.standard_normal((n, 3))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        similarity = 0.9 * vectors @ vectors.T
        np.fill_diagonal(similarity, 1.0)
        relevance, theta = rng.random(n), float(rng.uniform(0, 0.95))
        page = PageRules(np.zeros(n), np.zeros((n, 1)), np.zeros(n, bool), NO_RULES, k)
        order = select_page(DPPGreedy(relevance, similarity, theta, k), relevance, page, k).order
        for t in range(k):
            before = order[:t].tolist()
            rest = [i for i in range(n) if i not in before]
            best = max(rest, key=lambda i: log_det_gain(similarity, relevance, theta, [*before, i]))
            steps_ok += int(best == order[t])
            steps += 1
        greedy = log_det_gain(similarity, relevance, theta, order.tolist())
        exact = max(
            log_det_gain(similarity, relevance, theta, list(s))
            for s in itertools.combinations(range(n), k)
        )
        ratios.append(float(np.exp(greedy - exact)))
    return {
        "n": n,
        "k": k,
        "trials": trials,
        "greedy_steps_equal_to_brute_force": steps_ok / steps,
        "det_ratio_greedy_to_map_median": float(np.median(ratios)),
        "det_ratio_greedy_to_map_min": float(np.min(ratios)),
        "greedy_set_is_map": float(np.mean(np.isclose(ratios, 1.0))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/rerank"))
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)
    rows = []
    cases = [(20, 100, 0), (50, 500, 0), (50, 500, 10)]
    for (k, n, window), method, rules in itertools.product(
        cases, ("mmr", "dpp"), (NO_RULES, RULES)
    ):
        if window and method == "mmr":
            continue
        repeats = args.repeats if n <= 100 else args.repeats // 4
        p50, p99 = time_selection(method, n, k, rules, repeats, window)
        row = {
            "method": method,
            "k": k,
            "n": n,
            "window": window,
            "rules": "on" if rules is RULES else "off",
            "p50_us": round(p50, 1),
            "p99_us": round(p99, 1),
        }
        floor = FLOOR_20_OF_100.get(method) if (k, n) == (20, 100) else None
        if floor:
            row["perf_notes_p50_us"], row["ratio_p50_to_perf_notes"] = floor[0], p50 / floor[0]
        rows.append(row)
        print(row)
    result = {"selection": rows, "exactness": exactness()}
    print(result["exactness"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
