"""`cascade eval cascade`: the whole cascade measured end to end through the running services.

Starts a stack on free loopback ports, replays the test period of the per-user temporal split:
for each test user one Recommend through the gateway (history = training period, which is what
the services' feature store holds), plus the gateway's own funnel (gateway/pipeline.py, under
the gateway's settings, budget and fallbacks) run in this process over gRPC to the same stages,
each cut being the funnel stopped after a stage (recall only, + prerank, + rank, + rerank).
Every row, baselines included, is scored by the same code: top-20 page vs the user's test items
not seen in training. On a world with a ground truth (synthetic) the primary metric is the
truth's expected engagement per impression of each page's first 10 items (`true_engagement`,
the simulator's measure): logged test plays only reward putting first what the logging policy
happened to show.

    cascade eval cascade --dataset ml-100k synthetic --out results/cascade  # app/eval_cascade.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade import metrics, profiles, topology
from cascade.baselines import default_models
from cascade.config import SettingsError, load_settings
from cascade.data import DataError, dataset_folder, load_dataset
from cascade.data.split import split_dataset
from cascade.evaluation import UserItems
from cascade.profiles import ABOUT, Profile, default_profile, evaluation_profile, load_profile
from cascade.progress import track
from cascade.telemetry import new_registry
from cascade.v1 import common_pb2
from gateway.pipeline import Budget, Cascade
from research.simulate import SimulationConfig, World, simulated_users


class RunningStack(typing.Protocol):
    """What the evaluation reads of a running stack (app/stack.py's Stack)."""

    environments: dict[str, dict[str, str]]  # service -> the environment it was started with

    def address(self, name: str = "gateway") -> str: ...

    def has(self, name: str) -> bool: ...


# Starts a stack on free ports in a run folder and stops it on exit (app/stack.py's running_stack).
StartStack = Callable[..., AbstractContextManager[RunningStack]]

K = 20  # page length: NDCG@10 on its first half, Recall@20 on all of it
TRUTH = "true engagement@10"  # on a world with a ground truth: the primary metric
CUTS = ("recall only", "+ prerank", "+ rank", "+ rerank")  # the funnel stopped after each stage
TIMEOUT_S = 5.0  # each Recommend's deadline (the gateway cuts it to its max_deadline_s)


@dataclass(frozen=True)
class Funnel:
    recall: int = 2000
    prerank: int = 500
    rank: int = 100


@dataclass
class Protocol:
    """Who is evaluated and what counts as a hit (the rule of cascade.evaluation)."""

    users: np.ndarray  # (n,) evaluated user ids
    seen: UserItems  # training items per user: excluded from every ranking
    relevant: UserItems  # test items not seen in training
    n_items: int
    categories: np.ndarray  # (n_items, C) category ids by item id

    @classmethod
    def build(
        cls, dataset, sample: int | None, seed: int, exclude: np.ndarray | None = None
    ) -> Protocol:
        """The evaluated users: every eligible one (history and unseen test items), less
        `exclude`, then `sample` of them drawn with `seed`."""
        split = split_dataset(dataset)
        n_users, n_items = dataset.n_users, dataset.n_items
        seen = UserItems.from_table(split.train_interactions, n_users, n_items)
        test = split.test_interactions
        keys = np.unique(test["user_id"] * n_items + test["item_id"])
        seen_keys = np.repeat(np.arange(n_users), seen.lengths()) * n_items + seen.items
        keys = keys[~np.isin(keys, seen_keys)]
        relevant = UserItems.from_pairs(keys // n_items, keys % n_items, n_users, n_items)
        users = np.flatnonzero((seen.lengths() > 0) & (relevant.lengths() > 0))
        if exclude is not None:
            users = users[~np.isin(users, exclude)]
        if sample and sample < len(users):
            users = np.sort(np.random.default_rng(seed).choice(users, sample, replace=False))
        categories = np.zeros((n_items, dataset.items["categories"].shape[1]), np.int64)
        categories[dataset.items["item_id"]] = dataset.items["categories"]
        return cls(users, seen, relevant, n_items, categories)

    def reach(self, lists: list[np.ndarray]) -> float:
        """Mean share of a user's relevant items inside the stage's whole output list."""
        shares = []
        for user, ids in zip(self.users.tolist(), lists, strict=True):
            relevant = self.relevant.items[
                self.relevant.indptr[user] : self.relevant.indptr[user + 1]
            ]
            shares.append(np.isin(relevant, ids).mean())
        return round(float(np.mean(shares)), 4)

    def per_user(self, pages: np.ndarray) -> dict[str, np.ndarray]:
        """Per-user NDCG@10 and Recall@20 of (n_users, K) pages (for paired comparisons)."""
        is_relevant = self.relevant.dense(self.users)
        hits = np.take_along_axis(is_relevant, pages, axis=1) & (pages > 0)
        n_relevant = is_relevant.sum(axis=1)
        return {
            "NDCG@10": np.asarray(metrics.ndcg_at_k(hits, n_relevant, 10), dtype=np.float64),
            "Recall@20": np.asarray(metrics.recall_at_k(hits, n_relevant, K), dtype=np.float64),
        }

    def score(self, pages: np.ndarray) -> dict[str, float]:
        """Metrics of (n_users, K) pages of item ids (0 = empty slot, never a hit)."""
        is_relevant = self.relevant.dense(self.users)  # (n, n_items)
        hits = np.take_along_axis(is_relevant, pages, axis=1) & (pages > 0)
        n_relevant = is_relevant.sum(axis=1)
        filled = pages[pages > 0]
        return {
            "n_test_users": len(self.users),
            "NDCG@10": float(metrics.ndcg_at_k(hits, n_relevant, 10).mean()),
            "Recall@20": float(metrics.recall_at_k(hits, n_relevant, K).mean()),
            "Coverage@20": metrics.coverage(filled, self.n_items - 1),
            "ILD@20": float(metrics.ild_jaccard(pages, self.categories).mean()),
            "short_pages": int((pages == 0).any(axis=1).sum()),
        }


# The synthetic headline's test users: `--sample 500` and 5000 (results/cascade/e2e.md, the
# channel ablation) and the default 1000 (`make eval`), all drawn with seed 0. A tuning split
# must not touch them.
HEADLINE_SAMPLES = (500, 1000, 5000)
HEADLINE_SEED = 0
LOOP_USERS = 1000  # `make bench-loop` simulates this many users (seed 0)


def held_out_users(dataset) -> np.ndarray:
    """Users the validation split leaves out: every headline test sample and, on a world with a
    ground truth, the users `make bench-loop` simulates (the loop is judged, never tuned on)."""
    held = [Protocol.build(dataset, n, HEADLINE_SEED).users for n in HEADLINE_SAMPLES]
    if dataset.truth:
        held.append(simulated_users(dataset, SimulationConfig(users=LOOP_USERS, seed=0)))
    return np.unique(np.concatenate(held))


def evaluated_protocol(dataset, split: str, sample: int | None, seed: int) -> Protocol:
    """ "test": the headline's users; "validation": users disjoint from them and from the loop's
    (for tuning settings), drawn with seed + 1 so the two draws differ even on the same pool."""
    if split == "test":
        return Protocol.build(dataset, sample, seed)
    protocol = Protocol.build(dataset, sample, seed + 1, exclude=held_out_users(dataset))
    if not len(protocol.users):  # e.g. ml-100k: its headline evaluates every test user
        raise ValueError(f"{dataset.name}: the validation split is empty (every user is held out)")
    return protocol


def gateway_funnel(overrides: Mapping[str, str], served: Sequence[Profile] = ()) -> Funnel:
    """The funnel the gateway serves with under `served` profiles, the environment and
    `overrides` (environment variables)."""
    from gateway.settings import GatewaySettings

    prefix = topology.spec("gateway").env_prefix
    gateway = load_settings(
        GatewaySettings,
        env_prefix=prefix,
        environ=os.environ | overrides,
        profiles=profiles.layers(served, "gateway"),
    )
    return Funnel(gateway.recall_count, gateway.prerank_count, gateway.rank_count)


def baseline_pages(dataset, protocol: Protocol) -> dict[str, np.ndarray]:
    split = split_dataset(dataset)
    pages = {}
    for model in default_models():
        model.fit(split.train_interactions, dataset.n_users, dataset.n_items)
        scores = np.array(model.score(protocol.users), dtype=np.float64)
        scores[:, 0] = -np.inf
        scores[protocol.seen.pairs(protocol.users)] = -np.inf
        pages[model.name] = metrics.top_k(scores, K)
    return pages


def _page(ids: Sequence[int]) -> np.ndarray:
    page = np.zeros(K, np.int64)
    top = np.asarray(ids, np.int64)[:K]
    page[: len(top)] = top
    return page


def stack_cascade(
    running: RunningStack, served_profiles: Sequence[Profile]
) -> tuple[Cascade, dict, Callable[[], Budget]]:
    """The gateway's own funnel (gateway/pipeline.py) under the running gateway's settings,
    calling the stack's stages over gRPC (a stage the stack does not run answers by its
    fallback, as in the gateway), and the budget the gateway gives each call of TIMEOUT_S."""
    from gateway.catalog import load_catalog
    from gateway.pipeline import GatewayMetrics
    from gateway.settings import GatewaySettings
    from gateway.transport import LocalPool, new_cascade, stage_pools

    prefix = topology.spec("gateway").env_prefix
    environ = os.environ | running.environments["gateway"]
    settings = load_settings(
        GatewaySettings,
        env_prefix=prefix,
        environ=environ,
        profiles=profiles.layers(served_profiles, "gateway"),
    )
    registry = new_registry()
    served = [stage for stage in topology.STAGES if running.has(stage)]
    pools: dict = stage_pools(settings, None, {s: running.address(s) for s in served})
    pools |= {s: LocalPool(s, None) for s in topology.STAGES if s not in served}
    cascade = new_cascade(settings, load_catalog(settings), pools, GatewayMetrics(registry))
    total = min(TIMEOUT_S, settings.max_deadline_s)  # as gateway/server.py's _budget_s
    total -= min(settings.safety_margin_s, total / 5)
    return cascade, pools, lambda: Budget(total, settings.shares())


def cascade_pages(
    running: RunningStack, users: np.ndarray, served_profiles: Sequence[Profile]
) -> tuple[dict, dict, dict]:
    """Pages of the gateway (one Recommend each) and of each cut of the funnel: the gateway's
    funnel run again in this process over gRPC to the same stages, stopped after each stage."""
    from gateway.client import CascadeClient
    from gateway.pipeline import Served

    client = CascadeClient(running.address("gateway"), timeout_s=TIMEOUT_S)
    cascade, pools, budget = stack_cascade(running, served_profiles)
    pages = {name: np.zeros((len(users), K), np.int64) for name in ("cascade", *CUTS)}
    funnel_lists: dict[str, list[np.ndarray]] = {"recall": [], "prerank": [], "rank": []}
    degraded = {"cascade": 0, "cuts": 0}
    latencies = []
    for row, user_id in enumerate(track(users.tolist(), "evaluate cascade", "users")):
        started = time.perf_counter()
        answer = client.recommend(user_id, count=K)
        latencies.append(time.perf_counter() - started)
        degraded["cascade"] += bool(answer.degraded)
        pages["cascade"][row] = _page(answer.items.item_ids)
        user = common_pb2.UserContext(user_id=user_id)
        # Each cut is the funnel stopped after its stage: one run to the end holds them all
        # (a stage never sees what comes after it), so every stage is called once per user.
        served = Served()
        page = cascade.run(user, K, budget(), debug=False, served=served)
        degraded["cuts"] += bool(page.degraded)
        for cut, stage in zip(CUTS, topology.STAGES, strict=True):
            ids = served.lists[stage].item_ids
            pages[cut][row] = _page(ids)
            if stage in funnel_lists:
                funnel_lists[stage].append(np.asarray(ids))
    for pool in pools.values():
        pool.close()
    info = {
        "degraded_answers": degraded["cascade"],
        "degraded_cut_runs": degraded["cuts"],
        "gateway_p50_ms": 1e3 * float(np.median(latencies)),
    }
    return pages, info, funnel_lists


# Each test user is asked twice (the gateway, then the cuts stage by stage): rerank's
# already-shown filter would hide the first answer's page from the second, so this evaluation
# profile (deploy/profiles/evaluation/ask-twice.toml) turns it off on top of the served profile.
EVALUATION_PROFILE = "ask-twice"


def evaluate_dataset(name: str, args: argparse.Namespace) -> tuple[list[dict], dict]:
    dataset = load_dataset(name, args.data_dir)
    sample = args.sample if name != "ml-100k" else None  # ml-100k: every test user
    protocol = evaluated_protocol(dataset, args.split, sample, args.seed)
    artifacts = args.artifacts if name == "ml-100k" else args.artifacts / name
    served = load_profile(args.profile or default_profile(name))
    evaluation = evaluation_profile(EVALUATION_PROFILE)
    funnel = gateway_funnel({}, [served, evaluation])  # the funnel the gateway serves with
    print(
        f"== {name}: {len(protocol.users)} {args.split} users; stack on {artifacts}, profile "
        f"{served.name} with evaluation profile {evaluation.name}",
        flush=True,
    )
    with args.start_stack(
        args.run_dir / name,
        artifacts=artifacts,
        data_dir=args.data_dir,
        dataset=name,
        profiles=[served, evaluation],
        exact=True,  # a setting the profiles do not say is refused, not served
    ) as running:
        pages, info, funnel_lists = cascade_pages(running, protocol.users, [served, evaluation])
        info["profile"] = served.record()
        info["evaluation_profile"] = evaluation.record() | {
            "changes": {k: v for k, v in evaluation.tables.items() if k != ABOUT},
            "why": evaluation.description,
        }
        info["funnel"] = vars(funnel)
        info["prerank"] = "served" if running.has("prerank") else "absent: recall order, truncated"
        if not running.has("prerank"):  # renamed in place, keeping the funnel's order
            pages = {
                (k if k != "+ prerank" else "+ prerank (absent: truncation)"): v
                for k, v in pages.items()
            }
    # How much of the test set each stage still holds: the ceiling of everything after it.
    info["reach"] = {stage: protocol.reach(lists) for stage, lists in funnel_lists.items()}
    pages |= baseline_pages(dataset, protocol)
    world = World(dataset) if dataset.truth else None
    truth = {m: true_engagement(world, protocol.users, p) for m, p in pages.items() if world}
    rows = [
        {"dataset": name, "model": model, **protocol.score(page)}
        | ({TRUTH: float(truth[model].mean())} if world else {})
        for model, page in pages.items()
    ]
    per_user = {m: protocol.per_user(pages[m]) for m in ("cascade", "EASE", "ItemKNN")}
    for model in per_user if world else ():
        per_user[model] = {TRUTH: truth[model], **per_user[model]}
    info["paired"] = {
        baseline: paired_difference(per_user["cascade"], per_user[baseline], args.seed)
        for baseline in ("EASE", "ItemKNN")
    }
    return rows, info


def true_engagement(world: World, users: np.ndarray, pages: np.ndarray, k: int = 10) -> np.ndarray:
    """Per user, the truth's expected engagement per impression of the page's first k slots at
    their positions (an empty slot engages no one)."""
    out = np.zeros(len(users))
    for n, (user, page) in enumerate(zip(users.tolist(), pages[:, :k], strict=True)):
        slots = np.flatnonzero(page > 0)
        engaged = world.expected_engagement(world.utility(user, page[slots]), slots)
        out[n] = engaged.sum() / k
    return out


def paired_difference(
    mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], seed: int, rounds: int = 2000
) -> dict[str, dict[str, float]]:
    """Per metric: the mean per-user difference (cascade - baseline), its bootstrap 95% interval
    (users resampled with replacement, seeded) and the ratio of the means."""
    rng = np.random.default_rng(seed)
    out = {}
    for metric, values in mine.items():
        diff = values - theirs[metric]
        resampled = rng.integers(0, len(diff), size=(rounds, len(diff)))
        means = diff[resampled].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out[metric] = {
            "mean_difference": round(float(diff.mean()), 5),
            "ci95_low": round(float(low), 5),
            "ci95_high": round(float(high), 5),
            "ratio": round(float(values.mean() / max(theirs[metric].mean(), 1e-12)), 4),
            "users_better": int((diff > 0).sum()),
            "users_worse": int((diff < 0).sum()),
        }
    return out


def to_markdown(rows: list[dict], infos: dict) -> str:
    lines = ["# The cascade end to end (per-user temporal split, full catalog)", ""]
    for name, info in infos.items():
        mine = [r for r in rows if r["dataset"] == name]
        columns: tuple[str, ...] = ("NDCG@10", "Recall@20", "Coverage@20", "ILD@20")
        if all(TRUTH in r for r in mine):
            columns = (TRUTH, *columns)
        run = {k: v for k, v in info.items() if k != "paired"}
        lines += [f"## {name}", "", *served_lines(info), f"Run: {json.dumps(run)}", ""]
        lines += [
            "| model | users | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 2) + "|",
        ]
        for row in mine:
            cells = " | ".join(f"{row[c]:.4f}" for c in columns)
            lines.append(f"| {row['model']} | {row['n_test_users']} | {cells} |")
        if TRUTH in columns:
            lines += ["", TRUTH_NOTE]
        lines += ["", verdict(mine), ""]
        lines += paired_lines(info.get("paired", {}))
    return "\n".join(lines)


def served_lines(info: dict) -> list[str]:
    """What the stack served: the profile and the evaluation profile on top, with what it
    changes and why."""
    served, evaluation = info.get("profile"), info.get("evaluation_profile")
    if not served:
        return []
    line = (
        f"Served: profile {served['name']} (`cascade up --profile {served['name']}`, "
        f"{served['file']}, sha256 {served['sha256'][:12]})"
    )
    if evaluation:
        line += (
            f", with evaluation profile {evaluation['name']} ({evaluation['file']}, sha256 "
            f"{evaluation['sha256'][:12]}) on top: {json.dumps(evaluation['changes'])}, "
            f"{evaluation['why']}"
        )
    return [line + ".", ""]


def paired_lines(paired: dict) -> list[str]:
    """The per-user paired differences as a table (cascade - baseline, bootstrap 95% CI)."""
    if not paired:
        return []
    lines = [
        "Per-user paired difference, cascade - baseline (mean, bootstrap 95% interval over "
        "users, ratio of means, users better / worse):",
        "",
        "| baseline | metric | mean difference | 95% interval | ratio | better / worse |",
        "|---|---|---|---|---|---|",
    ]
    for baseline, by_metric in paired.items():
        for metric, p in by_metric.items():
            lines.append(
                f"| {baseline} | {metric} | {p['mean_difference']:+.4f} | "
                f"[{p['ci95_low']:+.4f}, {p['ci95_high']:+.4f}] | {p['ratio']:.4f} | "
                f"{p['users_better']} / {p['users_worse']} |"
            )
    return [*lines, ""]


TRUTH_NOTE = (
    f"{TRUTH}: the world's expected play + complete + 2 like + 3 share per impression of the "
    "page's first 10 slots at their positions (its ground truth; the primary metric). NDCG and "
    "Recall count the test period's logged plays, which exist only where the logging policy "
    "chose to show an item: they reward imitating that policy, not serving users well."
)


def verdict(rows: list[dict]) -> str:
    """The cascade's NDCG@10 against EASE and ItemKNN, as a sentence with the gaps."""
    ndcg = {row["model"]: row["NDCG@10"] for row in rows}
    parts = []
    for baseline in ("EASE", "ItemKNN"):
        gap = ndcg["cascade"] - ndcg[baseline]
        word = "beats" if gap > 0 else "falls short of"
        parts.append(f"{word} {baseline} by {abs(gap):.4f} ({100 * gap / ndcg[baseline]:+.1f}%)")
    return f"NDCG@10: the cascade {' and '.join(parts)}."


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        mine = [r for r in rows if r["dataset"] == name]
        x = np.arange(len(mine))
        for offset, metric in ((-0.2, "NDCG@10"), (0.2, "Recall@20")):
            ax.bar(x + offset, [r[metric] for r in mine], 0.4, label=metric)
        ax.set_xticks(x, [r["model"] for r in mine], rotation=30, ha="right")
        ax.set_title(f"{name}: end to end over gRPC")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None, start_stack: StartStack) -> int:
    parser = argparse.ArgumentParser(
        prog="cascade eval cascade", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--dataset",
        nargs="+",
        default=["ml-100k"],
        help="datasets to evaluate: ml-100k, synthetic or imported ones (default: ml-100k)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="ml-100k bundle root; other datasets use ARTIFACTS/<dataset>",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".cascade/eval"),
        help="the stack's pid file and logs (default: .cascade/eval)",
    )
    parser.add_argument("--sample", type=int, default=1000, help="test users sampled (synthetic)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the sampled test users (default: 0)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="report folder (default: data/run/cascade; with --split validation or --set: "
        "data/run/cascade/e2e-<split>, so the headline's rows are never overwritten; `make "
        "eval-cascade` writes the committed results/cascade)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="test: the headline's sampled test users; validation: users disjoint from every "
        "headline sample and from the simulated loop's users, for tuning (default: test)",
    )
    parser.add_argument(
        "--profile",
        help="the profile the stack serves, exactly (deploy/profiles/NAME.toml), with the "
        f"evaluation profile {EVALUATION_PROFILE} on top (deploy/profiles/evaluation/); "
        "default: each dataset's default profile",
    )
    args = parser.parse_args(argv)
    args.start_stack = start_stack
    try:
        for name in args.dataset:  # every name checked before the first stack starts
            dataset_folder(name, args.data_dir)
            load_profile(args.profile or default_profile(name))
    except (SettingsError, DataError) as error:
        parser.error(str(error))
    if args.out is None:
        suffix = "-".join(
            [*([args.split] if args.split != "test" else []), *filter(None, [args.profile])]
        )
        args.out = args.data_dir / "run" / "cascade" / (f"e2e-{suffix}" if suffix else "")
    rows, infos = [], {}
    for name in args.dataset:
        started = time.perf_counter()
        found, info = evaluate_dataset(name, args)
        infos[name] = info | {"seconds": round(time.perf_counter() - started, 1)}
        rows += found
    previous = args.out / "e2e.json"
    if previous.exists():  # datasets not run this time keep their rows from the previous run
        old = json.loads(previous.read_text())
        kept = [r for r in old["rows"] if r["dataset"] not in infos]
        infos = {k: v for k, v in old["runs"].items() if k not in infos} | infos
        infos = dict(sorted(infos.items()))
        rows = sorted(kept + rows, key=lambda r: r["dataset"])
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"page": K, "runs": infos, "rows": rows}
    if args.split != "test":
        report |= {"split": args.split}
    (args.out / "e2e.json").write_text(json.dumps(report, indent=2))
    (args.out / "e2e.md").write_text(to_markdown(rows, infos))
    plot(rows, args.out / "e2e.png")
    print(to_markdown(rows, infos))
    print(f"saved {args.out}/e2e.json, e2e.md, e2e.png")
    return 0
