"""Trains the recall component (`cascade train recall`): the two-tower model (two_tower.py) +
FAISS index, the MF channel's item vectors + index (services/recall/mf.py), the channel tables.

    python -m services.recall.train --dataset ml-100k --data-dir data --artifacts artifacts \
        [--version V] [--publish] [--no-two-tower] [--item-cf ease] [--from-bundle current]

Everything is trained on the per-user temporal split's training part (the serving store is built
from the same part), and the component records the feature spec so serving refuses a mismatch.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascade import distributed
from cascade.artifacts import Bundle, BundleWriter, add_training_arguments, clone, publish
from cascade.data import load_dataset
from cascade.data.schema import Dataset, Table
from cascade.data.split import split_dataset
from cascade.features import FeatureSpec, build_spec
from services.recall.tables import (
    CF_MODELS,
    COMPONENT,
    TableSettings,
    build_tables,
    save_tables,
)

log = logging.getLogger(__name__)


def build_recall(
    dataset: Dataset,
    train: Table,
    writer: BundleWriter,
    spec: FeatureSpec | None = None,
    two_tower: bool = True,
    two_tower_config=None,
    table_settings: TableSettings | None = None,
    progress: bool = True,
    mf: bool = True,
) -> dict:
    """Writes the component's files and manifest entry; returns the component info. Under
    torchrun the workers other than 0 train their part of the two-tower and write nothing."""
    spec = spec or build_spec(dataset)
    if not distributed.is_writer():
        from services.recall.two_tower import TwoTowerConfig, train_two_tower

        if two_tower:
            train_two_tower(dataset, train, spec, two_tower_config or TwoTowerConfig(), False)
        return {}
    table_settings = table_settings or TableSettings()
    started = time.perf_counter()
    tables = build_tables(dataset, train, table_settings)
    files = save_tables(writer, tables)
    info: dict[str, Any] = {  # the component's manifest entry
        "dataset": dataset.name,
        "protocol": "per_user_temporal",
        "feature_spec_fingerprint": spec.fingerprint,
        "feature_spec": spec.to_json(),
        "n_items": dataset.n_items,
        "as_of": int(tables["popular"]["as_of"]),
        "tables": {
            "settings": table_settings.to_dict(),
            "files": files,
            "seconds": round(time.perf_counter() - started, 2),
        },
    }
    if mf:
        from services.recall.mf import build_mf

        started = time.perf_counter()
        info.update(build_mf(train, dataset.n_users, dataset.n_items, writer))
        info["mf"]["seconds"] = round(time.perf_counter() - started, 2)
    if two_tower:
        # The two-tower model and index come from services/recall/{train,export}.py.
        from services.recall.export import export_two_tower
        from services.recall.index import IndexSettings
        from services.recall.two_tower import TwoTowerConfig, train_two_tower

        config = two_tower_config or TwoTowerConfig()
        model = train_two_tower(dataset, train, spec, config, progress=progress)
        info.update(export_two_tower(model, spec, writer, IndexSettings()))
    writer.set_component(COMPONENT, info)
    writer.commit()
    return info


def rebuild_tables(
    artifacts: Path,
    source_name: str,
    version: str,
    dataset: Dataset,
    train: Table,
    table_settings: TableSettings,
) -> Path:
    """A copy of bundle `source_name` (every stage) as `version` whose recall tables and MF
    channel are rebuilt with `table_settings`; the two-tower is kept. Returns the folder."""
    old = Bundle.open(artifacts, source_name).component(COMPONENT)
    if old.get("dataset") != dataset.name:
        raise ValueError(
            f"bundle {source_name}: its recall was trained on {old.get('dataset')!r}, "
            f"not {dataset.name!r}"
        )
    clone(artifacts, source_name, version)  # hard links; the rebuilt files replace theirs
    refresh_tables(artifacts, version, dataset, train, table_settings)
    return Path(artifacts) / version


def refresh_tables(
    artifacts: Path,
    version: str,
    dataset: Dataset,
    train: Table,
    table_settings: TableSettings | None = None,
    progress: bool = True,
) -> dict:
    """Rebuilds recall's tables and MF channel of bundle `version` in place (a clone: each
    rebuilt file replaces its hard link) from `train`, with `table_settings` or else the ones
    the bundle was built with (e.g. EASE item-CF); the two-tower is kept. Returns the build's
    info (its `as_of`)."""
    old = Bundle.open(artifacts, version).component(COMPONENT)
    if table_settings is None:
        table_settings = TableSettings.from_dict(old.get("tables", {}).get("settings", {}))
    writer = BundleWriter(artifacts, version)
    spec = FeatureSpec.from_json(old["feature_spec"])
    info = build_recall(
        dataset,
        train,
        writer,
        spec,
        two_tower=False,
        progress=progress,
        table_settings=table_settings,
    )
    if "two_tower" in old:  # its files came with the clone
        writer.manifest["components"][COMPONENT]["two_tower"] = old["two_tower"]
        writer.commit()
    return info


def main(argv: Sequence[str] | None = None) -> int:
    from services.recall.two_tower import TwoTowerConfig

    parser = argparse.ArgumentParser(description="Build the recall artifacts into a bundle.")
    add_training_arguments(parser)
    parser.add_argument("--version", default=None, help="bundle version (default: UTC time)")
    parser.add_argument("--publish", action="store_true", help="point artifacts/current at it")
    parser.add_argument("--no-two-tower", action="store_true", help="channel tables only")
    parser.add_argument(
        "--two-tower-mixed-negatives",
        type=int,
        default=TwoTowerConfig.mixed_negatives,
        metavar="N",
        help="uniform draws from the whole catalogue added to each batch's in-batch negatives "
        f"(default: {TwoTowerConfig.mixed_negatives}, in-batch only)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=TwoTowerConfig.threads,
        help=f"torch threads per worker for the two-tower (default: {TwoTowerConfig.threads})",
    )
    parser.add_argument(
        "--two-tower-epochs",
        type=int,
        default=TwoTowerConfig.epochs,
        metavar="N",
        help=f"passes over the training interactions (default: {TwoTowerConfig.epochs})",
    )
    parser.add_argument(
        "--no-two-tower-logq",
        action="store_true",
        help="no logQ correction of the in-batch softmax by each item's sampling frequency",
    )
    parser.add_argument(
        "--item-cf",
        choices=CF_MODELS,
        default=TableSettings.cf_model,
        help="the item-CF channel's neighbours: time-decayed co-consumption, or EASE's item-item "
        f"weights (dense, small catalogs; default: {TableSettings.cf_model}); recorded in the "
        "bundle (recall.tables.settings.cf_model) and kept by the daily retrain",
    )
    parser.add_argument(
        "--from-bundle",
        default=None,
        metavar="NAME",
        help="copy bundle NAME under --artifacts (every stage) into the new version and rebuild "
        "only recall's tables and MF channel, keeping NAME's two-tower: what a table setting "
        "changes, without retraining the rest",
    )
    args = parser.parse_args(argv)
    if args.two_tower_epochs < 1:
        parser.error("--two-tower-epochs must be >= 1")
    if args.two_tower_mixed_negatives < 0:
        parser.error("--two-tower-mixed-negatives must be >= 0")
    if args.from_bundle and not args.version:
        parser.error("--from-bundle needs --version (the copy's name)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "faiss.loader"):  # chatty at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    dataset = load_dataset(args.dataset, args.data_dir)
    train = split_dataset(dataset).train_interactions
    table_settings = TableSettings(cf_model=args.item_cf)
    if args.from_bundle:
        try:
            folder = rebuild_tables(
                args.artifacts, args.from_bundle, args.version, dataset, train, table_settings
            )
        except ValueError as error:
            parser.error(f"--from-bundle: {error}")
        log.info("recall tables (%s) rebuilt into %s", args.item_cf, folder)
        if args.publish:
            publish(args.artifacts, args.version)
            log.info("published %s as current", args.version)
        return 0
    writer = BundleWriter(args.artifacts, args.version)
    two_tower = TwoTowerConfig(
        mixed_negatives=args.two_tower_mixed_negatives,
        logq_correction=not args.no_two_tower_logq,
        threads=args.threads,
        epochs=args.two_tower_epochs,
    )  # recorded in the manifest (recall.two_tower.training.config)
    info = build_recall(
        dataset,
        train,
        writer,
        two_tower=not args.no_two_tower,
        two_tower_config=two_tower,
        table_settings=table_settings,
    )
    log.info("recall component of %s written to %s", dataset.name, writer.folder)
    if "two_tower" in info:
        log.info("two-tower: %s", {k: info["two_tower"].get(k) for k in ("dim", "index_kind")})
    if args.publish:
        publish(args.artifacts, writer.version)
        log.info("published %s as current", writer.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
