"""Cold start on the synthetic world's truth: the ranker trained with item-id dropout against the
published one, on known items (`cascade eval cascade`) and on uploads (`cascade simulate` and
`bench.cold_start_funnel`).

    python -m bench.cold_start build --item-id-dropout 0.1        # WORK/artifacts, published
    cascade eval cascade --dataset synthetic --sample 500 --artifacts artifacts \\
        --out WORK/eval-base                                        # the published bundle
    cascade eval cascade --dataset synthetic --sample 500 --artifacts WORK/eval-root \\
        --out WORK/eval-dropout                                     # the dropout bundle
    cascade simulate --users 1000 --days 3 --artifacts WORK/artifacts \\
        --run-dir .cascade/simulate-cold --out WORK/simulate
    python -m bench.cold_start_funnel --run-dir .cascade/simulate-cold --out WORK/simulate
    python -m bench.cold_start report                               # results/loop/cold-start

`build` starts from the published synthetic bundle (hard links) and retrains only the ranker, as
`cascade train rank --item-id-dropout P` does, with bench/debias.py's shared preparation
(`prepare`, `train_prepared`, `write_trained`); recall, pre-rank and rerank are the published
ones. `report` sets the two evaluations side by side per cut, and the uploads' funnel and fresh
share of the new simulation against the committed one (results/loop/uploads) and its oracle.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

WORK = Path(".cascade/cold-start")
CUTS = ("recall only", "+ prerank", "+ rank", "+ rerank", "cascade", "EASE")


def build(args: argparse.Namespace) -> None:
    from app import loop
    from cascade.artifacts import Bundle, clone, publish
    from cascade.data import load_dataset
    from services.rank.model import ModelConfig
    from services.rank.train import TrainConfig, train_prepared, write_trained
    from training.rank_train import prepare

    root = loop.serving_copy(args.artifacts, args.data_dir, args.work)  # WORK/artifacts
    clone(root, Bundle.open(root).folder.name, "base")
    (args.work / "eval-root").mkdir(parents=True, exist_ok=True)
    link = args.work / "eval-root" / "synthetic"  # `cascade eval` reads ARTIFACTS/synthetic
    link.unlink(missing_ok=True)
    link.symlink_to(root.resolve())
    started = time.perf_counter()
    dataset = load_dataset("synthetic", args.data_dir)
    config = TrainConfig(seed=args.seed, item_id_dropout=args.item_id_dropout)
    prepared = prepare(dataset, replace(config, item_id_dropout=0.0), bundle=Bundle.open(root))
    model, info = train_prepared(prepared, config, ModelConfig())
    clone(root, "base", "dropout")
    write_trained(root, "dropout", model, prepared, config, ModelConfig(), info)
    publish(root, "dropout")
    seconds = time.perf_counter() - started
    print(
        f"ranker (item-id dropout {args.item_id_dropout}) in {root / 'dropout'} ({seconds:.0f} s)"
    )


def _cuts(path: Path) -> dict:
    rows = json.loads(path.read_text())["rows"]
    return {
        r["model"]: {k: r[k] for k in ("true engagement@10", "NDCG@10", "Coverage@20") if k in r}
        for r in rows
        if r["dataset"] == "synthetic" and r["model"] in CUTS
    }


def _fresh(simulation: Path) -> dict:
    report = json.loads(simulation.read_text())
    out: dict[str, list] = {}
    for r in sorted(report["rows"], key=lambda r: r["day"]):
        if r["arm"] in ("cascade", "oracle", "random", "ease"):
            out.setdefault(r["arm"], []).append(
                {
                    "day": r["day"],
                    "fresh_share": r["fresh_share"],
                    "expected_engagement": round(r["expected_engagement"], 4),
                    "ci95": round(r["expected_ci95"], 4),
                }
            )
    return {"config": {k: report["config"][k] for k in ("users", "days", "seed")}, "arms": out}


def report(args: argparse.Namespace) -> None:
    work, before = args.work, args.before
    result = {
        "item_id_dropout": json.loads(
            (work / "artifacts" / "dropout" / "rank" / "rank.json").read_text()
        )["config"]["train"]["item_id_dropout"],
        "fusion_weights": {  # tuned on each ranker's validation slice (TrainConfig)
            name: json.loads((work / "artifacts" / name / "rank" / "rank.json").read_text())[
                "fusion_weights"
            ]
            for name in ("base", "dropout")
        },
        "eval": {
            "published": _cuts(work / "eval-base" / "e2e.json"),
            "dropout": _cuts(work / "eval-dropout" / "e2e.json"),
            "paired": _paired(work),
        },
        "funnel": {
            name: json.loads((folder / "cold_start_funnel.json").read_text())
            for name, folder in _runs(work, before).items()
        },
        "simulation": {
            name: _fresh(folder / "simulation.json") for name, folder in _runs(work, before).items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    text = to_markdown(result)
    (args.out / "cold_start.md").write_text(text)
    print(text)


def _runs(work: Path, before: Path) -> dict[str, Path]:
    """The simulations compared: the committed one, the published bundle again on this code
    (WORK/simulate-base, when run) and the dropout bundle."""
    runs = {"committed": before, "published": work / "simulate-base", "dropout": work / "simulate"}
    return {name: folder for name, folder in runs.items() if (folder / "simulation.json").exists()}


def _paired(work: Path) -> dict:
    """Each run's paired per-user difference of the cascade against EASE (same users)."""
    out = {}
    for name in ("base", "dropout"):
        runs = json.loads((work / f"eval-{name}" / "e2e.json").read_text())
        out[name] = runs.get("runs", {}).get("synthetic", {}).get("paired")
    return out


def to_markdown(result: dict) -> str:
    p = result["item_id_dropout"]
    lines = [
        "# Cold start: the ranker trained with item-id dropout",
        "",
        f"Ranker retrained with `--item-id-dropout {p}` (every other component the published "
        "synthetic bundle's). Known items, `cascade eval cascade --dataset synthetic --sample "
        "500` (true expected engagement per impression of the first 10 slots):",
        "",
        "| cut | published | dropout |",
        "|---|---|---|",
    ]
    base, mine = result["eval"]["published"], result["eval"]["dropout"]
    for cut in CUTS:
        if cut in base and cut in mine:
            key = "true engagement@10"
            lines.append(f"| {cut} | {base[cut][key]:.4f} | {mine[cut][key]:.4f} |")
    paired = [
        result["eval"]["paired"][name]["EASE"]["true engagement@10"] for name in ("base", "dropout")
    ]
    lines.append(
        "| cascade - EASE, paired per user (95%) | "
        + " | ".join(
            f"{d['mean_difference']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}]"
            for d in paired
        )
        + " |"
    )
    lines += [
        "",
        "Served fusion weights, tuned on each ranker's validation slice: "
        + "; ".join(f"{name} {weights}" for name, weights in result["fusion_weights"].items()),
    ]
    funnel = result["funnel"]
    lines += [
        "",
        "Uploads kept per request (`python -m bench.cold_start_funnel`, 100 users at the run's "
        "last request time):",
        "",
        "| stage | " + " | ".join(funnel) + " |",
        "|---" * (len(funnel) + 1) + "|",
    ]
    # A run measured at other cuts (an older committed one) has other row names: "-" there.
    for stage in funnel["dropout"]["uploaded_per_request"]:
        values = " | ".join(
            str(run["uploaded_per_request"].get(stage, "-")) for run in funnel.values()
        )
        lines.append(f"| {stage} | {values} |")
    sim = result["simulation"]
    lines += [
        "",
        "Share of impressions on items younger than a day, per simulated day (`cascade "
        f"simulate`, {sim['dropout']['config']['users']} users x "
        f"{sim['dropout']['config']['days']} days, seed {sim['dropout']['config']['seed']}), "
        "and expected engagement per impression (95% interval over sessions); committed: "
        "results/loop/uploads on the published bundle, published: the same bundle re-run on this "
        "code, dropout: the new ranker; every run on a 2-core machine shared with other jobs:",
        "",
        "| run | arm | fresh share per day | engagement per day |",
        "|---|---|---|---|",
    ]
    for run in sim:
        for arm, days in sim[run]["arms"].items():
            fresh = " / ".join(f"{d['fresh_share']:.3f}" for d in days)
            value = " / ".join(f"{d['expected_engagement']:.4f} ± {d['ci95']:.4f}" for d in days)
            lines.append(f"| {run} | {arm} | {fresh} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("build", "report"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/synthetic"))
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--item-id-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--before",
        type=Path,
        default=Path("results/loop/uploads"),
        help="the committed run with uploads on the published bundle",
    )
    parser.add_argument("--out", type=Path, default=Path("results/loop/cold-start"))
    args = parser.parse_args(argv)
    if args.step == "build":
        build(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
