"""Debiasing ablated on the synthetic world's truth: one bundle per training option, each served
to the same simulated users for the same days, judged by true engagement.

    python -m bench.debias --users 1000 --days 2 --out results/loop     (make bench-ablate)

Every variant starts from the published synthetic bundle (artifacts/synthetic; trained when
missing) and retrains only what its option touches, with the same data and seed: the ranker (what
`cascade train rank --max-epochs E [--position-tower|--ips]` does, the rows prepared once for
all rankers) or the recall component (`cascade train recall [--no-two-tower-logq|
--two-tower-mixed-negatives N]`); the pre-rank student and the reranker start as the published
ones (the daily retrain distils the student again from the variant's fine-tuned ranker).
Each bundle is then served by `cascade simulate` (app/loop.py) to the arms cascade, random and
oracle, one variant after another; the same seed puts the same users in the same arms (their
sessions are drawn from it too, but a page shorter than 10 shifts the later draws). Writes
OUT/ablations.json and .md: per variant and day, the cascade arm's expected engagement per
impression (95% interval), the oracle-random gap it closes, and its ratio to the baseline row of
the same run (delta-method interval, as if independent: conservative).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from app import loop
from cascade.artifacts import Bundle, clone, publish
from research.compare_runs import compare

ARMS = ("cascade", "random", "oracle")


@dataclass(frozen=True)
class Variant:
    name: str
    row: str  # the ablation row
    what: str
    rank: tuple[str, ...] | None = None  # options of `cascade train rank`; None: the baseline's
    recall_flags: tuple[str, ...] | None = None  # None: the published recall component
    retrain: str = "daily"  # app/loop.py --retrain


VARIANTS = (
    Variant(
        "baseline",
        "-",
        "ranker on logged impressions, slot ignored; two-tower in-batch + logQ; fine-tuned daily "
        "on its own served impressions",
        rank=(),
    ),
    Variant(
        "logged-only",
        "a",
        "the baseline's bundle frozen: its ranker only ever saw the logging policy's impressions",
        retrain="never",
    ),
    Variant(
        "position-tower",
        "b",
        "ranker with a shallow position tower in training, dropped at serving (PAL)",
        rank=("position_tower",),
    ),
    Variant(
        "ips",
        "c",
        "ranker's positive labels weighted by 1 / examination(slot), the world's known propensity",
        rank=("ips",),
    ),
    Variant(
        "no-logq",
        "c",
        "two-tower without the logQ correction of its in-batch softmax (the baseline has it)",
        recall_flags=("--no-two-tower-logq",),
    ),
    Variant(
        "mixed-negatives",
        "d",
        "two-tower negatives: in-batch plus 1024 uniform draws from the whole catalogue",
        recall_flags=("--two-tower-mixed-negatives", "1024"),
    ),
)


def build_bundles(args: argparse.Namespace, variants: tuple[Variant, ...]) -> dict[str, float]:
    """Every variant's bundle under WORK/artifacts (with --reuse-bundles, only those missing);
    returns the training seconds per variant trained. The rankers share one preparation of the
    training rows (the options change the fit, not the rows): `cascade train rank` with the
    variant's flags on the same data and seed, without preparing the rows once per variant."""
    from cascade.data import load_dataset
    from services.rank.model import ModelConfig
    from services.rank.train import TrainConfig, train_prepared, write_trained
    from services.recall.train import main as train_recall
    from training.rank_train import prepare

    root = args.work / "artifacts"
    if not (args.reuse_bundles and (root / "base").exists()):
        loop.serving_copy(args.artifacts, args.data_dir, args.work)  # WORK/artifacts, linked
        clone(root, Bundle.open(root).folder.name, "base")  # the published bundle, named
    seconds = {}
    ranked = [v for v in variants if v.rank is not None and not (root / v.name).exists()]
    if ranked:
        started = time.perf_counter()
        dataset = load_dataset("synthetic", args.data_dir)
        config = TrainConfig(seed=args.seed, max_epochs=args.rank_epochs)
        prepared = prepare(dataset, config, bundle=Bundle.open(root, "base"))
        seconds["prepare rank rows"] = round(time.perf_counter() - started, 1)
        for variant in ranked:
            started = time.perf_counter()
            clone(root, "base", variant.name)
            options = dict.fromkeys(variant.rank, True)
            train_config = replace(config, ips=options.get("ips", False))
            model_config = ModelConfig(position_tower=options.get("position_tower", False))
            model, info = train_prepared(prepared, train_config, model_config)
            write_trained(root, variant.name, model, prepared, train_config, model_config, info)
            seconds[variant.name] = round(time.perf_counter() - started, 1)
            print(f"== {variant.name}: ranker trained in {seconds[variant.name]} s", flush=True)
    common = ["--dataset", "synthetic", "--data-dir", str(args.data_dir), "--artifacts", str(root)]
    for variant in variants:
        if variant.recall_flags is None or (root / variant.name).exists():
            continue  # served from the baseline's bundle, or kept (--reuse-bundles)
        started = time.perf_counter()
        clone(root, "baseline", variant.name)
        train_recall([*common, "--version", variant.name, *variant.recall_flags])
        seconds[variant.name] = round(time.perf_counter() - started, 1)
        print(f"== {variant.name}: recall trained in {seconds[variant.name]} s", flush=True)
    return seconds


def command(variant: Variant, rank_epochs: int) -> str:
    """The stage training command the variant's bundle differs by."""
    if variant.rank is not None:
        flags = "".join(f" --{name.replace('_', '-')}" for name in variant.rank)
        return f"cascade train rank --dataset synthetic --max-epochs {rank_epochs}{flags}"
    if variant.recall_flags is not None:
        return "cascade train recall --dataset synthetic " + " ".join(variant.recall_flags)
    return "(the baseline's bundle)"


def serve(args: argparse.Namespace, variant: Variant) -> dict:
    """`cascade simulate` on the variant's bundle (published as current of WORK/artifacts)."""
    root = args.work / "artifacts"
    bundle = variant.name if (root / variant.name).exists() else "baseline"
    publish(root, bundle)
    options = loop.parse(
        [
            *("--data-dir", str(args.data_dir), "--artifacts", str(root)),
            *("--days", str(args.days), "--users", str(args.users), "--seed", str(args.seed)),
            *("--arms", *ARMS, "--retrain", variant.retrain, "--run-dir", str(args.work / "run")),
        ]
    )
    report = loop.run(options)
    report["bundle"] = bundle
    return report


def table(variants: tuple[Variant, ...], reports: dict[str, dict], rank_epochs: int) -> list[dict]:
    """One row per variant: the cascade arm on the last day, and its ratio to the baseline."""
    rows = []
    for variant in variants:
        report = reports[variant.name]
        last = max(r["day"] for r in report["rows"])
        (mine,) = [r for r in report["rows"] if r["arm"] == "cascade" and r["day"] == last]
        ratios = {r["day"]: r for r in compare(report, reports["baseline"], "cascade")}
        rows.append(
            {
                "variant": variant.name,
                "row": variant.row,
                "what": variant.what,
                "trained_by": command(variant, rank_epochs),
                "retrain": variant.retrain,
                "day": last,
                "impressions": mine["impressions"],
                "expected_engagement": round(mine["expected_engagement"], 4),
                "ci95": round(mine["expected_ci95"], 4),
                "oracle_gap_closed": round(mine["oracle_gap_closed"], 4),
                "ratio_to_baseline": ratios[last]["ratio"],
                "ratio_ci95": None if variant.name == "baseline" else ratios[last]["ci95"],
                "per_day": [  # day 0: the bundle as trained, before any fine-tune
                    {
                        "day": r["day"],
                        "impressions": r["impressions"],
                        "expected_engagement": round(r["expected_engagement"], 4),
                        "ci95": round(r["expected_ci95"], 4),
                        "oracle_gap_closed": round(r["oracle_gap_closed"], 4),
                        "ratio_to_baseline": ratios[r["day"]]["ratio"],
                        "ratio_ci95": (
                            None if variant.name == "baseline" else ratios[r["day"]]["ci95"]
                        ),
                    }
                    for r in report["rows"]
                    if r["arm"] == "cascade"
                ],
            }
        )
    return rows


def to_markdown(result: dict) -> str:
    config = result["config"]
    last = config["days"]
    lines = [
        "# Debiasing ablated on the synthetic world's truth",
        "",
        f"{config['users']} simulated users x {config['days']} simulated days per variant, arms "
        f"{', '.join(config['arms'])}, seed {config['seed']} (the same users in the same arms "
        "in every variant); rankers trained for at most "
        f"{config['rank_epochs']} epochs; the simulations took {result['serving_seconds']} s "
        "in all on a shared 2-core machine.",
        "",
        "Expected engagement per impression of the cascade arm (play + complete + 2 like + 3 "
        "share at the shown slot, from the world's truth; 95% interval over sessions), the "
        "fraction of the oracle-random gap it closes, and the ratio to the baseline row of this "
        "run (delta method, as if independent: conservative). Day 1 serves each bundle as "
        f"trained; day {last} (the last) serves it after the daily fine-tunes on its own served "
        "impressions (logged-only: never fine-tuned).",
        "",
        f"| row | variant | retrain | day 1 | gap | / baseline | day {last} | ± | gap "
        "| / baseline | ± (95%) |",
        "|---" * 11 + "|",
    ]
    for r in result["rows"]:
        first = r["per_day"][0]
        lines.append(
            f"| {r['row']} | {r['variant']} | {r['retrain']} "
            f"| {first['expected_engagement']:.4f} ± {first['ci95']:.4f} "
            f"| {first['oracle_gap_closed']:.3f} | {_ratio(first)} "
            f"| {r['expected_engagement']:.4f} | {r['ci95']:.4f} | {r['oracle_gap_closed']:.3f} "
            f"| {r['ratio_to_baseline']:.3f} "
            f"| {'-' if r['ratio_ci95'] is None else format(r['ratio_ci95'], '.3f')} |"
        )
    lines += ["", "| variant | what | bundle trained by |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['what']} | `{r['trained_by']}` |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def _ratio(day: dict) -> str:
    if day["ratio_ci95"] is None:
        return f"{day['ratio_to_baseline']:.3f}"
    return f"{day['ratio_to_baseline']:.3f} ± {day['ratio_ci95']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="datasets (data)")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts/synthetic"),
        help="the published synthetic bundle every variant starts from",
    )
    parser.add_argument("--users", type=int, default=1000, help="simulated users (default 1000)")
    parser.add_argument("--days", type=int, default=2, help="simulated days (default 2)")
    parser.add_argument("--rank-epochs", type=int, default=2, help="ranker epochs at most")
    parser.add_argument("--seed", type=int, default=0, help="training and simulation seed")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[v.name for v in VARIANTS],
        default=[v.name for v in VARIANTS],
        help="which rows (baseline always runs: the ratios need it)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".cascade/ablate"),
        help="the variants' bundles and the stacks' logs (default: .cascade/ablate)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/loop"),
        help="folder for ablations.{json,md} (default: results/loop)",
    )
    parser.add_argument(
        "--reuse-bundles",
        action="store_true",
        help="keep the variants' bundles an earlier run left under WORK/artifacts (train only "
        "the missing ones)",
    )
    parser.add_argument(
        "--reuse-reports",
        action="store_true",
        help="keep the simulations an earlier run of the same size saved under WORK/reports "
        "(serve only the variants without one: resumes a run that stopped)",
    )
    args = parser.parse_args(argv)
    chosen = {"baseline", *args.variants}
    variants = tuple(v for v in VARIANTS if v.name in chosen)
    started = time.perf_counter()
    training = build_bundles(args, variants)
    reports = {}
    for variant in variants:
        kept = args.work / "reports" / f"{variant.name}.json"  # survives a failure further on
        if args.reuse_reports and kept.exists():
            earlier = json.loads(kept.read_text())
            size = {k: earlier["config"][k] for k in ("users", "days", "seed", "retrain")}
            if size == {"users": args.users, "days": args.days, "seed": args.seed} | {
                "retrain": variant.retrain
            }:
                print(f"== {variant.name}: served by an earlier run ({kept})", flush=True)
                reports[variant.name] = earlier
                continue
        print(f"== serving {variant.name} ({variant.retrain} retrain)", flush=True)
        reports[variant.name] = serve(args, variant)
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(reports[variant.name], indent=2))
    result = {
        "config": {
            "users": args.users,
            "days": args.days,
            "arms": list(ARMS),
            "seed": args.seed,
            "rank_epochs": args.rank_epochs,
            "variants": [asdict(v) for v in variants],
        },
        "seconds": round(time.perf_counter() - started, 1),
        "training_seconds": training,  # of this invocation (none for kept bundles)
        "serving_seconds": round(sum(r["seconds"] for r in reports.values()), 1),
        "rows": table(variants, reports, args.rank_epochs),
        "simulations": reports,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablations.json").write_text(json.dumps(result, indent=2))
    text = to_markdown(result)
    (args.out / "ablations.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
