"""Recall's channel quotas chosen by a seeded search on the synthetic world's truth.

The cross-entropy method over the quota simplex (quotas = softmax of a Gaussian vector whose mean
starts at the served profile's log-quotas): each round draws `--population` quota mixes, scores
each on the search users (per-request quotas, as an experiment arm sends them, to the frozen
stack in this process: bench/truth_pages.py) and refits the Gaussian to the best `--elite`. The
best mix found is then paired against the served quotas on separate confirmation users, so the
search's own selection luck does not inflate the figure. Both user sets come from the tuning
split (`evaluated_protocol(..., "validation", ...)`: users disjoint from every headline test
sample and from the simulated loop's users), drawn with `--seed`; `bench/funnel_tuning.py` tunes
the funnel's sizes on the same split with a stack per configuration.

    python -m bench.quota_search --out results/recall [--search-users 400] [--confirm-users 600]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.channel_ablation import served_quotas
from bench.truth_pages import open_cascade, scored
from cascade.data import load_dataset
from cascade.profiles import DEFAULT, load_profile
from research.evaluation_e2e import HEADLINE_SAMPLES, TRUTH, evaluated_protocol, paired_difference
from research.simulate import World


def tuning_users(dataset, search: int, confirm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint search and confirmation users, both from the tuning (validation) split."""
    pool = evaluated_protocol(dataset, "validation", None, seed).users
    if search + confirm > len(pool):
        raise ValueError(f"{search} + {confirm} tuning users asked, the split holds {len(pool)}")
    drawn = np.random.default_rng(seed).permutation(pool)
    return np.sort(drawn[:search]), np.sort(drawn[search : search + confirm])


def to_quotas(names: Sequence[str], logits: np.ndarray) -> dict[str, float]:
    """Softmax of `logits`, rounded to 3 decimals (what a profile file holds)."""
    share = np.exp(logits - logits.max())
    share = np.round(share / share.sum(), 3)
    return {name: float(q) for name, q in zip(names, share, strict=True)}


def search(args: argparse.Namespace) -> dict:
    dataset = load_dataset("synthetic", args.data_dir)
    world = World(dataset)
    search_users, confirm_users = tuning_users(
        dataset, args.search_users, args.confirm_users, args.seed
    )
    served = served_quotas(args.profile)
    names = list(served)
    cascade = open_cascade(args.artifacts, args.data_dir, args.profile)
    rng = np.random.default_rng(args.seed)
    mean = np.log(np.maximum([served[n] for n in names], 1e-3))
    sigma = np.full(len(names), args.sigma)
    tried: list[dict] = []
    base, facts = scored(world, cascade, search_users, served)
    tried.append({"round": 0, "quotas": served, TRUTH: round(float(base.mean()), 4), **facts})
    print(f"served: {base.mean():.4f} {facts}", flush=True)
    for round_ in range(1, args.rounds + 1):
        draws = mean + sigma * rng.standard_normal((args.population, len(names)))
        scores = []
        for logits in draws:
            quotas = to_quotas(names, logits)
            values, facts = scored(world, cascade, search_users, quotas)
            scores.append(float(values.mean()))
            tried.append({"round": round_, "quotas": quotas, TRUTH: round(scores[-1], 4), **facts})
            print(f"round {round_}: {scores[-1]:.4f} {quotas} {facts}", flush=True)
        elite = draws[np.argsort(scores)[::-1][: args.elite]]
        mean = elite.mean(axis=0)
        sigma = np.maximum(elite.std(axis=0), 0.05)
    best = max(tried[1:], key=lambda row: row[TRUTH])
    found, _ = scored(world, cascade, confirm_users, best["quotas"])
    reference, _ = scored(world, cascade, confirm_users, served)
    paired = paired_difference({TRUTH: found}, {TRUTH: reference}, args.seed)[TRUTH]
    return {
        "tuning_users": {
            "split": "validation: eligible users (training history and unseen test items) less "
            f"every headline test sample (seed 0, sizes {list(HEADLINE_SAMPLES)}) and the "
            "simulated loop's users",
            "drawn": f"the split's users permuted with numpy default_rng({args.seed}); the first "
            f"{len(search_users)} search, the next {len(confirm_users)} confirm",
            "seed": args.seed,
            "search": len(search_users),
            "confirm": len(confirm_users),
        },
        "method": {
            "name": "cross-entropy method on softmax(logits), logits ~ N(mean, sigma)",
            "rounds": args.rounds,
            "population": args.population,
            "elite": args.elite,
            "sigma": args.sigma,
            "start": "the served profile's log-quotas",
        },
        "profile": load_profile(args.profile).record(),
        "bundle": str(args.artifacts),
        "served_quotas": served,
        "tried": tried,
        "best": best,
        "confirmation": {
            "users": len(confirm_users),
            "best": round(float(found.mean()), 4),
            "served": round(float(reference.mean()), 4),
            "best_minus_served": paired,
            "beats_served": paired["ci95_low"] > 0,
        },
    }


def to_markdown(report: dict) -> str:
    users, method, confirm = report["tuning_users"], report["method"], report["confirmation"]
    names = list(report["served_quotas"])
    paired = confirm["best_minus_served"]
    lines = [
        "# Recall's channel quotas searched on the synthetic world's truth",
        "",
        f"Tuning users: the {users['split']}; {users['drawn']} (`python -m bench.quota_search "
        f"--search-users {users['search']} --confirm-users {users['confirm']} --rounds "
        f"{method['rounds']} --population {method['population']} --elite {method['elite']} "
        f"--sigma {method['sigma']} --seed {users['seed']}`, `make bench-quota-search`). "
        f"Method: {method['name']}, "
        f"{method['rounds']} rounds of {method['population']}, elite {method['elite']}, start "
        f"sigma {method['sigma']}, from {method['start']}; frozen stack {report['bundle']} "
        f"under profile {report['profile']['name']}. Score: {TRUTH} on the search users.",
        "",
        f"| round | {' | '.join(names)} | {TRUTH} | degraded |",
        "|---" * (len(names) + 3) + "|",
    ]
    for row in report["tried"]:
        label = "served" if row["round"] == 0 else str(row["round"])
        quotas = " | ".join(f"{row['quotas'].get(n, 0.0):.3f}" for n in names)
        lines.append(f"| {label} | {quotas} | {row[TRUTH]:.4f} | {row['degraded_answers']} |")
    best = report["best"]
    lines += [
        "",
        f"Best on the search users: {json.dumps(best['quotas'])} ({best[TRUTH]:.4f}).",
        "",
        f"Confirmation on {confirm['users']} other tuning users: best {confirm['best']:.4f}, "
        f"served {confirm['served']:.4f}; best - served {paired['mean_difference']:+.4f} "
        f"[{paired['ci95_low']:+.4f}, {paired['ci95_high']:+.4f}] (ratio {paired['ratio']:.4f}, "
        f"users better / worse {paired['users_better']} / {paired['users_worse']}): "
        + (
            "the best mix beats the served quotas."
            if confirm["beats_served"]
            else "not clearly better than the served quotas."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/synthetic"))
    parser.add_argument("--profile", default=DEFAULT, help="the served profile it starts from")
    parser.add_argument("--search-users", type=int, default=400)
    parser.add_argument("--confirm-users", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--elite", type=int, default=2)
    parser.add_argument("--sigma", type=float, default=0.8, help="start sigma of the log-quotas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/recall"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = search(args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quota_search.json").write_text(json.dumps(report, indent=2))
    (args.out / "quota_search.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"saved {args.out}/quota_search.json, quota_search.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
