"""Offline training of the ranker on the training period's impressions, on real recall outputs
at training-period requests (training/rank_examples.py), or on both (`TrainConfig.examples`).

    python -m training.rank_train --dataset ml-100k --data-dir data --artifacts artifacts --publish

Rows are impressions from each user's first 80% by time (per-user temporal split); the last
`validation_fraction` of each user's training impressions is the validation slice for early
stopping. History comes from training interactions strictly before each impression. Deterministic
for a seed (one torch thread). Large sources are subsampled with the seed (`max_train_rows`).
The fitting itself is rank's (services/rank/train.py).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from cascade import distributed
from cascade.artifacts import add_training_arguments
from cascade.context_fields import FoldedMF, MFPositions
from cascade.data import load_dataset
from cascade.data.schema import Dataset, Table
from cascade.data.split import TemporalSplit, per_user_temporal, split_dataset, take
from cascade.features import (
    CHANNEL_POSITION,
    CONTEXT_BUCKETS,
    DEFAULT_WIDTHS,
    FeatureSpec,
    build_spec,
)
from cascade.profiles import DEFAULT
from cascade.rows import OfflineRows
from services.rank.model import ModelConfig, RankModel
from services.rank.train import (
    EXAMPLES,
    Prepared,
    RecallExamples,
    TrainConfig,
    train_prepared,
    write_trained,
)

log = logging.getLogger(__name__)


def _subsample(table: Table, limit: int, seed: int) -> Table:
    n = len(table["ts"])
    if n <= limit:
        return table
    keep = np.zeros(n, dtype=bool)
    keep[np.random.default_rng(seed).choice(n, limit, replace=False)] = True
    return take(table, keep)


def training_examples(
    dataset: Dataset, data: TemporalSplit, spec: FeatureSpec, config: TrainConfig, bundle=None
) -> Table:
    """The training period's examples of the configured kind (see TrainConfig.examples)."""
    if config.examples == "impressions":
        return data.train_impressions
    if bundle is None:
        raise ValueError(f"examples={config.examples!r} needs a bundle with the recall component")
    from cascade.feature_store import InMemoryFeatureStore
    from training.rank_examples import recall_examples

    tasks = tuple(config.tasks or dataset.meta["tasks"])
    store = InMemoryFeatureStore.from_split(dataset, spec, data)
    found = recall_examples(
        bundle, store, spec, data.train_interactions, tasks, config.recall_examples
    )
    if config.examples == "recall":
        return found
    recall_only = ("channel_mask", "channel_position")
    logged = {k: data.train_impressions[k] for k in found if k not in recall_only}
    for column in recall_only:  # logged impressions carry no recall tags or positions
        logged[column] = np.zeros(len(logged["ts"]), dtype=np.uint32)
    return {k: np.concatenate([logged[k], found[k]]) for k in found}


def prepare(
    dataset: Dataset, config: TrainConfig, spec: FeatureSpec | None = None, bundle=None
) -> Prepared:
    """Split, examples and encoded rows. `bundle`: the cascade.artifacts.Bundle whose recall
    component finds the candidates when config.examples is "recall" or "both", and whose MF
    model (when it has one) fills the mf_position field."""
    spec = build_spec(dataset) if spec is None else spec
    data = split_dataset(dataset)
    mf = MFPositions.from_bundle(bundle) if bundle is not None else None
    offline = OfflineRows(dataset, spec, data.train_interactions, mf)
    fitting = offline  # rows the model is fitted and early-stopped on
    if mf is not None and config.mf_folds:
        info = bundle.component("recall")["mf"]
        log = data.train_interactions
        folded = FoldedMF.fit(log, dataset.n_users, dataset.n_items, info, config.mf_folds)
        fitting = OfflineRows(dataset, spec, log, folded)
    examples = training_examples(dataset, data, spec, config, bundle)
    in_validation = per_user_temporal(examples, config.validation_fraction)
    train = _subsample(take(examples, ~in_validation), config.max_train_rows, 1)
    validation = _subsample(take(examples, in_validation), config.max_train_rows // 8, 2)
    test = _subsample(data.test_impressions, config.max_test_rows, 3)
    parts = [(fitting.impressions(t), t) for t in (train, validation)]
    parts.append((offline.impressions(test), test))
    return Prepared(dataset, spec, data, offline, *parts)


def rank_spec(dataset: Dataset, model_config: ModelConfig) -> FeatureSpec:
    """The data's spec, with the optional channel_position field when the model names it."""
    chosen = model_config.context_fields
    if chosen is None or CHANNEL_POSITION not in chosen:
        return build_spec(dataset)
    return build_spec(dataset, {CHANNEL_POSITION: DEFAULT_WIDTHS["context"]})


def train(
    dataset: Dataset, config: TrainConfig, model_config: ModelConfig, bundle=None
) -> tuple[RankModel, Prepared, dict]:
    """Fits the full model; its info includes test-period metrics per task."""
    prepared = prepare(dataset, config, rank_spec(dataset, model_config), bundle)
    model, info = train_prepared(prepared, config, model_config)
    return model, prepared, info


def main(argv: list[str] | None = None) -> None:
    from cascade.artifacts import publish

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser)
    parser.add_argument(
        "--version", default=None, help="bundle version to write into (default: UTC time)"
    )
    parser.add_argument("--publish", action="store_true", help="point artifacts/current at it")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument(
        "--profile",
        default=DEFAULT,
        help="the profile whose recall the examples ask (its channel quotas and the gateway's "
        "recall count; training/served_recall.py; default: default)",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=TrainConfig.max_epochs,
        help=f"most epochs (early stopping; default: {TrainConfig.max_epochs})",
    )
    parser.add_argument(
        "--examples",
        choices=EXAMPLES,
        default=TrainConfig.examples,
        help="training examples: logged impressions, recall outputs at training-period requests "
        "(needs --version of a bundle with the recall component), or both",
    )
    parser.add_argument(
        "--position-tower",
        action="store_true",
        help="learn the shown slot's effect in a shallow tower used in training only and "
        "dropped at serving (PAL); default: the slot is ignored",
    )
    parser.add_argument(
        "--ips",
        action="store_true",
        help="weight positive labels by 1 / the world's examination probability of their slot "
        "(synthetic world only)",
    )
    parser.add_argument(
        "--item-id-dropout",
        type=float,
        default=TrainConfig.item_id_dropout,
        metavar="P",
        help="show this share of training rows with the item id and MF position unknown, so "
        "the ranker learns to score uploads it has never seen (services/rank/cold_start.py; "
        f"default: {TrainConfig.item_id_dropout})",
    )
    parser.add_argument(
        "--content",
        action="store_true",
        help="read the item's content vector (datasets whose items carry one); default: ignored",
    )
    parser.add_argument(
        "--context-fields",
        default=",".join(ModelConfig.context_fields or ()),
        metavar="NAMES",
        help="comma-separated context fields the ranker reads (cascade/context_fields.py; "
        "channels and channel_position need --examples recall or both); default: "
        f"{','.join(ModelConfig.context_fields or ())}",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=TrainConfig.threads,
        help=f"torch threads per worker (default: {TrainConfig.threads})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dataset = load_dataset(args.dataset, args.data_dir)
    config = TrainConfig(
        seed=args.seed,
        max_epochs=args.max_epochs,
        examples=args.examples,
        ips=args.ips,
        item_id_dropout=args.item_id_dropout,
        threads=args.threads,
        recall_examples=RecallExamples(profile=args.profile),
    )
    context_fields = tuple(name for name in args.context_fields.split(",") if name)
    known = (*CONTEXT_BUCKETS, "channels", CHANNEL_POSITION)
    if unknown := sorted(set(context_fields) - set(known)):
        raise SystemExit(f"--context-fields: unknown {unknown}; known: {', '.join(known)}")
    model_config = ModelConfig(
        position_tower=args.position_tower, content=args.content, context_fields=context_fields
    )
    from cascade.artifacts import ArtifactError, Bundle

    bundle: Bundle | None
    try:  # the bundle being built: its recall component (examples, MF model) when it has one
        bundle = Bundle.open(args.artifacts, args.version or "current")
        if "recall" not in bundle.manifest["components"]:
            bundle = None
    except ArtifactError:
        bundle = None
    if bundle is None and config.examples != "impressions":
        raise SystemExit(f"--examples {config.examples} needs a bundle with the recall component")
    model, prepared, info = train(dataset, config, model_config, bundle)
    if not distributed.is_writer():  # worker 0 evaluates, tunes and writes
        return
    writer = write_trained(
        args.artifacts, args.version, model, prepared, config, model_config, info
    )
    if args.publish:
        publish(args.artifacts, writer.version)
    for task, values in info["test"].items():
        print(
            f"{dataset.name} {task}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None)
        )
    print(f"rank component written to {writer.folder}" + (" (published)" if args.publish else ""))


if __name__ == "__main__":
    main()
