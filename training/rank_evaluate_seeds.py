"""Which ranker blocks and which training examples earn their place, over several seeds.

    python -m training.rank_evaluate_seeds --dataset ml-100k --bundle eval-ml-100k \
        --seeds 0 1 2 --out results/rank

Row sets (`--rows`): "blocks": plain DeepFM and each added block (per-field widths, attention,
PLE), trained on the logged impressions, then DeepFM and the full model trained on recall outputs
at training-period requests (entire-space negatives, training/rank_examples.py) and on both; all
without context fields. "context": the feature ablation, DeepFM without context fields, with each
group of them (counters: item plays and age; affinities: user-category and user-creator; MF
position) and with all, and the full model with the MF position and with all. EASE's candidates
carry no recall channel tags, so this measure cannot see the channel-tag field: `cascade eval
cascade` measures it. Each row is fitted once per seed (the seed drives initialisation and batch
order; the examples are built once, with seed 0) and reported as mean +- standard deviation over
seeds: a block is worth keeping only when its mean beats plain DeepFM's by more than the spread.
The measure is the cascade's: NDCG@10 of re-ranking EASE's top-100 candidates per test user
(training.rank_evaluate.Candidates), plus play AUC on the test period's logged impressions. The
recall bundle (`--bundle`, e.g. the one `cascade eval recall` builds) supplies the recall
component.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cascade.artifacts import Bundle
from cascade.data import load_dataset
from services.rank.fusion import tune_fusion
from services.rank.model import ModelConfig
from services.rank.train import evaluate, fit, predict
from training.rank_evaluate import ABLATIONS, REPORT, Candidates
from training.rank_train import prepare

log = logging.getLogger(__name__)

NO_CONTEXT = ()
CONTEXT_GROUPS = {
    "counters": ("item_plays", "item_age_days"),
    "affinities": ("category_affinity", "creator_affinity"),
    "MF position": ("mf_position",),
}
DEEPFM = replace(ABLATIONS["DeepFM"], context_fields=NO_CONTEXT)
FULL = replace(ABLATIONS["+ PLE (full)"], context_fields=NO_CONTEXT)


def row_set(name: str, examples: str = "both") -> list[tuple[str, str, ModelConfig]]:
    """(row name, training examples, model config) of one row set (see the module docstring)."""
    if name == "blocks":
        return [
            *(
                (row, "impressions", replace(c, context_fields=NO_CONTEXT))
                for row, c in ABLATIONS.items()
            ),
            ("DeepFM", "recall", DEEPFM),
            ("+ PLE (full)", "recall", FULL),
            ("DeepFM", "both", DEEPFM),
            ("+ PLE (full)", "both", FULL),
        ]
    if name == "context":
        return [
            ("DeepFM, no context", examples, DEEPFM),
            *(
                (f"DeepFM + {group}", examples, replace(DEEPFM, context_fields=fields))
                for group, fields in CONTEXT_GROUPS.items()
            ),
            ("DeepFM + all context", examples, replace(DEEPFM, context_fields=None)),
            ("full + MF position", examples, replace(FULL, context_fields=("mf_position",))),
            ("full + all context", examples, replace(FULL, context_fields=None)),
        ]
    raise ValueError(f"unknown row set {name!r}: blocks or context")


def run(
    dataset_name: str,
    data_dir: Path,
    artifacts: Path,
    bundle: str,
    seeds: list[int],
    rows_: list[tuple[str, str, ModelConfig]] | None = None,
) -> dict:
    """Each row fitted once per seed; `rows_` (default: the "blocks" set) are the rows."""
    rows_ = row_set("blocks") if rows_ is None else rows_
    dataset = load_dataset(dataset_name, data_dir)
    recall_bundle = Bundle.open(artifacts, bundle)
    base = REPORT[dataset_name]
    tasks = tuple(dataset.meta["tasks"])
    results: dict[tuple[str, str], list[dict]] = {}
    candidates = None
    started = time.perf_counter()
    for examples in dict.fromkeys(kind for _, kind, _ in rows_):
        prepared = prepare(dataset, replace(base, examples=examples), bundle=recall_bundle)
        if candidates is None:  # the same users and candidates for every row
            candidates = Candidates(prepared)
        for seed in seeds:
            config = replace(base, seed=seed, examples=examples)
            for name, kind, model_config in rows_:
                if kind != examples:
                    continue
                model, info = fit(prepared, tasks, model_config, config)
                test_rows, impressions = prepared.test
                per_task = evaluate(predict(model, test_rows, prepared.spec), impressions, tasks)
                # The fusion serving would use: tuned on the validation slice, as training does.
                val_rows, val_impressions = prepared.validation
                tuned, _ = tune_fusion(
                    predict(model, val_rows, prepared.spec),
                    val_impressions,
                    tasks,
                    base.fusion,
                    base.fusion_scales,
                )
                fusion = np.array([tuned[t] for t in tasks], dtype=np.float32)
                scores = predict(model, candidates.rows, prepared.spec) @ fusion
                measured = {
                    **candidates.ndcg(scores),
                    "play AUC": per_task[tasks[0]]["AUC"],
                    "like weight": float(tuned.get("like", 0.0)),
                    "train rows": len(prepared.train[1]["ts"]),
                    "epochs": len(info["epochs"]),
                }
                results.setdefault((name, examples), []).append(measured)
                log.info("%s %s seed %d: %s", name, examples, seed, measured)
    rows = []
    for (name, examples), runs in results.items():
        row = {"model": name, "examples": examples, "seeds": len(runs)}
        for key in runs[0]:
            values = np.array([r[key] for r in runs], dtype=np.float64)
            row[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
        rows.append(row)
    return {
        "dataset": dataset_name,
        "seeds": seeds,
        "ease_order": candidates.ndcg(None) if candidates is not None else {},
        "ndcg_users": int(len(candidates.users)) if candidates is not None else 0,
        "train_config": {k: str(v) for k, v in vars(base).items()},
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(report: dict) -> str:
    metrics = [k for k in report["rows"][0] if k not in ("model", "examples", "seeds")]
    shown = [m for m in metrics if m not in ("train rows", "epochs")]
    lines = [
        f"# Ranker rows over seeds {report['seeds']}: {report['dataset']}",
        "",
        f"Mean +- std over {len(report['seeds'])} seeds; NDCG@10 re-ranking EASE's top 100 for "
        f"{report['ndcg_users']} test users, by the fused score with the fusion weights "
        "tuned on the validation slice (`like weight`: the like task's). EASE's own order: "
        + ", ".join(f"{k} {v:.4f}" for k, v in report["ease_order"].items())
        + ".",
        "",
        "| model | examples | " + " | ".join(shown) + " | train rows |",
        "|---|---|" + "---|" * (len(shown) + 1),
    ]
    for row in report["rows"]:
        cells = " | ".join(f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in shown)
        lines.append(
            f"| {row['model']} | {row['examples']} | {cells} | {row['train rows']['mean']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        default="ml-100k",
        choices=sorted(REPORT),
        help="dataset to evaluate (default: ml-100k)",
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
    parser.add_argument("--bundle", default="current", help="bundle with the recall component")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds, one model each (default: 0 1 2)",
    )
    parser.add_argument("--max-epochs", type=int, default=0, help="override the report's epochs")
    parser.add_argument(
        "--max-train-rows", type=int, default=0, help="override the report's training rows"
    )
    parser.add_argument(
        "--rows",
        choices=("blocks", "context"),
        default="blocks",
        help="blocks: the seed blocks' ablation; context: the context fields' ablation "
        "(default: blocks)",
    )
    parser.add_argument(
        "--examples",
        choices=("impressions", "recall", "both"),
        default="both",
        help="training examples of the context rows (default: both)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/run/rank"),
        help="report folder (default: data/run/rank; the committed one is results/rank)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    if args.max_epochs:
        REPORT[args.dataset] = replace(REPORT[args.dataset], max_epochs=args.max_epochs)
    if args.max_train_rows:
        REPORT[args.dataset] = replace(REPORT[args.dataset], max_train_rows=args.max_train_rows)
    rows = row_set(args.rows, args.examples)
    report = run(args.dataset, args.data_dir, args.artifacts, args.bundle, args.seeds, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{'seeds' if args.rows == 'blocks' else 'context'}_{args.dataset}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
