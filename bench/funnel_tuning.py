"""Recall's channel quotas and the gateway's funnel sizes, tuned on the world's truth offline.

Each configuration (service settings as the environment variables the services read) gets its own
stack on the synthetic bundle; every user of the validation split (research/evaluation_e2e.py: users
disjoint from the headline's test samples and from the simulated loop's users) asks the gateway
once for a page of 10, as the loop does. A page is scored by the truth's expected engagement per
impression of its 10 slots; each configuration is paired per user against the default (bootstrap
95% interval) and compared with EASE on the same users.

    python -m bench.funnel_tuning --out results/cascade [--users 500] [--configs default mf-0.5]
        [--reference default] [--name funnel_tuning]

The channel quotas themselves are searched, not listed, by bench/quota_search.py on the same split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app import stack
from cascade.data import load_dataset
from cascade.profiles import DEFAULT, evaluation_profile, load_profile
from research.evaluation_e2e import (
    EVALUATION_PROFILE,
    HEADLINE_SAMPLES,
    TRUTH,
    baseline_pages,
    evaluated_protocol,
    gateway_funnel,
    paired_difference,
    true_engagement,
)
from research.simulate import World
from services.recall.server import RecallSettings

PAGE = 10  # the loop's page: what a simulated user is served
# Each configuration is the services' defaults (the profile `default`) with the evaluation's own
# profile on top (rerank's already-shown filter off) and the configuration's settings above both.
PROFILES = [load_profile(DEFAULT), evaluation_profile(EVALUATION_PROFILE)]


def channel_quota(channel: str, share: float) -> dict[str, str]:
    """Recall settings giving `channel` `share` of the candidates and the other channels the rest
    in their default proportions (quotas still sum to 1)."""
    budgets = RecallSettings().budgets()
    others = sum(b.quota for name, b in budgets.items() if name != channel)
    quotas = {n: (1 - share) * b.quota / others for n, b in budgets.items() if n != channel}
    return {
        f"CASCADE_RECALL_{n.upper()}_QUOTA": f"{q:.4f}"
        for n, q in (quotas | {channel: share}).items()
    }


def mf_quota(share: float) -> dict[str, str]:
    """The MF (EASE-family) channel's share of the candidates (see channel_quota)."""
    return channel_quota("mf", share)


def cut(name: str, size: int) -> dict[str, str]:
    return {f"CASCADE_GATEWAY_{name.upper()}_COUNT": str(size)}


def theta(trade_off: float) -> dict[str, str]:
    """Rerank's DPP trade-off: 1 = relevance only (the ranked order under the page rules)."""
    return {"CASCADE_RERANK_RERANK_DPP_TRADE_OFF": str(trade_off)}


def item_cf(bundle: str, quota: float | None = None) -> dict[str, str]:
    """Recall served from another bundle of the same root (one whose item-CF table holds EASE
    neighbours: `python -m bench.item_cf_bundle`), optionally with the item-CF channel's quota
    raised to `quota` and the other channels scaled to the rest."""
    settings = {"CASCADE_RECALL_BUNDLE": bundle}
    if quota is not None:
        settings |= channel_quota("item_cf", quota)
    return settings


# The configuration the grid started from, pinned so the grid does not move with the served
# defaults (the gateway's rank cut became 50 from this grid); every row is paired against it.
START = mf_quota(0.3) | cut("recall", 2000) | cut("prerank", 500) | cut("rank", 100)

# name -> (what it changes from START, settings).
GRID: dict[str, tuple[str, dict[str, str]]] = {
    "default": ("the starting defaults: MF quota 0.3; funnel 2000 / 500 / 100", {}),
    "mf-0.5": ("MF quota 0.5", mf_quota(0.5)),
    "mf-0.7": ("MF quota 0.7", mf_quota(0.7)),
    "mf-1.0": ("MF quota 1.0 (other channels only fill gaps)", mf_quota(1.0)),
    "recall-1000": ("recall 1000", cut("recall", 1000)),
    "prerank-250": ("prerank keeps 250", cut("prerank", 250)),
    "prerank-1000": ("prerank keeps 1000 (rank scores 1000)", cut("prerank", 1000)),
    "rank-50": ("rank keeps 50", cut("rank", 50)),
    "rank-200": ("rank keeps 200", cut("rank", 200)),
    "rank-30": ("rank keeps 30", cut("rank", 30)),
    "prerank-250-rank-50": (
        "prerank keeps 250, rank keeps 50",
        cut("prerank", 250) | cut("rank", 50),
    ),
    "mf-0.7-prerank-1000": (
        "MF quota 0.7, prerank keeps 1000",
        mf_quota(0.7) | cut("prerank", 1000),
    ),
    # What the offline rank ablation measures: rank re-ordering the MF (EASE) channel's top 100.
    "mf-1.0-recall-100": (
        "MF quota 1.0, recall 100 (rank orders MF's top 100)",
        mf_quota(1.0) | cut("recall", 100) | cut("prerank", 100),
    ),
    "mf-1.0-recall-300": (
        "MF quota 1.0, recall 300, prerank keeps 300",
        mf_quota(1.0) | cut("recall", 300) | cut("prerank", 300),
    ),
    "mf-1.0-recall-300-rank-50": (
        "MF quota 1.0, recall 300, prerank keeps 300, rank keeps 50",
        mf_quota(1.0) | cut("recall", 300) | cut("prerank", 300) | cut("rank", 50),
    ),
}
FIRST_GRID = tuple(GRID)  # what `make bench-funnel-tuning` runs

# The served defaults since the grid above (rank keeps 50), and what rerank and an EASE item-CF
# table change from them: pair these against "served" (--reference served).
SERVED = cut("rank", 50)
EASE_CF = "synthetic-ease-cf"  # the bundle `python -m bench.item_cf_bundle` writes
GRID |= {
    "served": ("served defaults: funnel 2000 / 500 / 50, DPP theta 0.9", SERVED),
    "theta-0.95": ("DPP theta 0.95", SERVED | theta(0.95)),
    "theta-0.99": ("DPP theta 0.99", SERVED | theta(0.99)),
    "theta-1": ("DPP theta 1 (relevance only)", SERVED | theta(1.0)),
    "ease-cf": ("item-CF from EASE's weights", SERVED | item_cf(EASE_CF)),
    "ease-cf-0.3": ("item-CF from EASE, quota 0.3", SERVED | item_cf(EASE_CF, 0.3)),
    "ease-cf-1.0-recall-300": (
        "item-CF from EASE, quota 1.0, recall 300, prerank keeps 300",
        SERVED | item_cf(EASE_CF, 1.0) | cut("recall", 300) | cut("prerank", 300),
    ),
    "ease-cf-1.0-recall-100": (
        "item-CF from EASE, quota 1.0, recall 100 (rank orders its top 100)",
        SERVED | item_cf(EASE_CF, 1.0) | cut("recall", 100) | cut("prerank", 100),
    ),
}
RELEVANCE = SERVED | theta(1.0)  # served defaults, rerank relevance only
GRID |= {
    "theta-1-ease-cf-1.0-recall-300": (
        "DPP theta 1; item-CF from EASE, quota 1.0, recall 300, prerank keeps 300",
        RELEVANCE | item_cf(EASE_CF, 1.0) | cut("recall", 300) | cut("prerank", 300),
    ),
    "theta-1-ease-cf-1.0-recall-200": (
        "DPP theta 1; item-CF from EASE, quota 1.0, recall 200, prerank keeps 200",
        RELEVANCE | item_cf(EASE_CF, 1.0) | cut("recall", 200) | cut("prerank", 200),
    ),
    "theta-1-ease-cf-1.0-recall-100": (
        "DPP theta 1; item-CF from EASE, quota 1.0, recall 100, prerank keeps 100",
        RELEVANCE | item_cf(EASE_CF, 1.0) | cut("recall", 100) | cut("prerank", 100),
    ),
    "theta-1-ease-cf-1.0-recall-50": (
        "DPP theta 1; item-CF from EASE, quota 1.0, recall 50, prerank keeps 50",
        RELEVANCE | item_cf(EASE_CF, 1.0) | cut("recall", 50) | cut("prerank", 50),
    ),
    "theta-1-ease-cf-1.0-recall-30": (
        "DPP theta 1; item-CF from EASE, quota 1.0, recall 30, prerank keeps 30",
        RELEVANCE | item_cf(EASE_CF, 1.0) | cut("recall", 30) | cut("prerank", 30),
    ),
    "theta-1-ease-cf-0.7-recall-100": (
        "DPP theta 1; item-CF from EASE, quota 0.7, recall 100, prerank keeps 100",
        RELEVANCE | item_cf(EASE_CF, 0.7) | cut("recall", 100) | cut("prerank", 100),
    ),
    "theta-1-mf-1.0-recall-300": (
        "DPP theta 1; MF quota 1.0, recall 300, prerank keeps 300",
        RELEVANCE | mf_quota(1.0) | cut("recall", 300) | cut("prerank", 300),
    ),
}
CONFIGS = {name: (what, START | change) for name, (what, change) in GRID.items()}


def served(running: stack.Stack, users: np.ndarray) -> tuple[np.ndarray, dict]:
    """Each user's served page of PAGE (0 = empty slot), degraded answers and the median time."""
    from gateway.client import CascadeClient

    client = CascadeClient(running.address("gateway"), timeout_s=5.0)
    pages = np.zeros((len(users), PAGE), np.int64)
    degraded, latencies = 0, []
    for row, user in enumerate(users.tolist()):
        started = time.perf_counter()
        answer = client.recommend(user, count=PAGE)
        latencies.append(1e3 * (time.perf_counter() - started))
        ids = np.asarray(answer.items.item_ids, np.int64)[:PAGE]
        pages[row, : len(ids)] = ids
        degraded += bool(answer.degraded)
    return pages, {
        "degraded_answers": degraded,
        "gateway_p50_ms": round(float(np.median(latencies)), 1),
    }


def interval(values: np.ndarray, seed: int, rounds: int = 2000) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean (users resampled, seeded)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def tune(args: argparse.Namespace) -> dict:
    dataset = load_dataset("synthetic", args.data_dir)
    protocol = evaluated_protocol(dataset, "validation", args.users, args.seed)
    world = World(dataset)
    ease = true_engagement(world, protocol.users, baseline_pages(dataset, protocol)["EASE"])
    truth, runs = {}, {}
    for name in args.configs:
        what, settings = CONFIGS[name]
        started = time.perf_counter()
        with stack.running_stack(
            args.run_dir / name,
            artifacts=args.artifacts,
            data_dir=args.data_dir,
            dataset="synthetic",
            extra_env=settings,
            profiles=PROFILES,
            quiet=True,
        ) as running:
            pages, info = served(running, protocol.users)
        truth[name] = true_engagement(world, protocol.users, pages)
        funnel = gateway_funnel(settings)
        runs[name] = {"changes": what, "settings": settings, "funnel": vars(funnel), **info}
        runs[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {truth[name].mean():.4f} ({runs[name]})", flush=True)
    rows = []
    for name in args.configs:
        mean = float(truth[name].mean())
        row = {"config": name, **runs[name], TRUTH: round(mean, 4)}
        row["ci95"] = interval(truth[name], args.seed)
        row["vs_EASE"] = round(mean / float(ease.mean()), 4)
        if name != args.reference and args.reference in truth:
            paired = paired_difference(
                {TRUTH: truth[name]}, {TRUTH: truth[args.reference]}, args.seed
            )
            row["vs_default"] = paired[TRUTH]
        rows.append(row)
    return {
        "split": "validation: users with training history and unseen test items, disjoint from "
        f"the headline's test samples ({', '.join(map(str, HEADLINE_SAMPLES))} at seed 0) and the "
        "loop's 1000 users",
        "users": len(protocol.users),
        "seed": args.seed,
        "page": PAGE,
        "reference": args.reference,
        # What every configuration's settings sit on: each row names its own deviations.
        "profiles": [profile.record() for profile in PROFILES],
        "EASE": {TRUTH: round(float(ease.mean()), 4), "ci95": interval(ease, args.seed)},
        "rows": rows,
    }


def clearly_better(row: dict) -> bool:
    return "vs_default" in row and row["vs_default"]["ci95_low"] > 0


def to_markdown(report: dict) -> str:
    ease = report["EASE"]
    reference = report.get("reference", "default")
    against = "the default" if reference == "default" else reference
    lines = [
        "# Recall quotas and funnel sizes tuned on the truth (validation split)",
        "",
        f"{report['users']} users (seed {report['seed']}) of the {report['split']}; one page of "
        f"{report['page']} each from a stack per configuration (synthetic bundle). Score: "
        f"{TRUTH}, the world's expected play + complete + 2 like + 3 share per impression at "
        "the slot's position. EASE on the "
        f"same users: {ease[TRUTH]:.4f} [{ease['ci95'][0]:.4f}, {ease['ci95'][1]:.4f}].",
        "",
        f"| config | changes | {TRUTH} | 95% interval | / EASE | paired vs {reference} "
        "[95% interval] | better / worse | degraded | p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        paired = row.get("vs_default")
        versus = (
            f"{paired['mean_difference']:+.4f} [{paired['ci95_low']:+.4f}, "
            f"{paired['ci95_high']:+.4f}] | {paired['users_better']} / {paired['users_worse']}"
            if paired
            else "reference | -"
        )
        lines.append(
            f"| {row['config']} | {row['changes']} | {row[TRUTH]:.4f} | "
            f"[{row['ci95'][0]:.4f}, {row['ci95'][1]:.4f}] | {row['vs_EASE']:.3f} | {versus} | "
            f"{row['degraded_answers']} | {row['gateway_p50_ms']} |"
        )
    better = [row["config"] for row in report["rows"] if clearly_better(row)]
    verdict = (
        f"Clearly better than {against} (paired interval above 0): {', '.join(better)}."
        if better
        else f"No configuration is clearly better than {against} (every paired interval "
        "includes 0 or lies below it)."
    )
    return "\n".join([*lines, "", verdict, ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/synthetic"))
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/funnel-tuning"))
    parser.add_argument("--users", type=int, default=500, help="validation users sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(FIRST_GRID))
    parser.add_argument(
        "--reference", default="default", help="the config every other is paired against"
    )
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    parser.add_argument("--name", default="funnel_tuning", help="report file stem under --out")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = tune(args) | {"seconds": 0.0}
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"saved {args.out}/{args.name}.json, {args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
