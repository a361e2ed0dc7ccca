"""Trains the recall component (`cascade train recall`): the two-tower model (two_tower.py) +
FAISS index, the MF channel's item vectors + index (services/recall/mf.py), the channel tables.

    python -m services.recall.train --dataset ml-100k --data-dir data --artifacts artifacts \
        [--version V] [--publish] [--no-two-tower]

Everything is trained on the per-user temporal split's training part (the serving store is built
from the same part), and the component records the feature spec so serving refuses a mismatch.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from cascade.artifacts import BundleWriter, add_training_arguments, publish
from cascade.data import load_dataset
from cascade.data.schema import Dataset, Table
from cascade.data.split import split_dataset
from cascade.features import FeatureSpec, build_spec
from services.recall.tables import (
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
    """Writes the component's files and manifest entry; returns the component info."""
    spec = spec or build_spec(dataset)
    table_settings = table_settings or TableSettings()
    started = time.perf_counter()
    tables = build_tables(dataset, train, table_settings)
    files = save_tables(writer, tables)
    info = {
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
        "--no-two-tower-logq",
        action="store_true",
        help="no logQ correction of the in-batch softmax by each item's sampling frequency",
    )
    args = parser.parse_args(argv)
    if args.two_tower_mixed_negatives < 0:
        parser.error("--two-tower-mixed-negatives must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "faiss.loader"):  # chatty at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    dataset = load_dataset(args.dataset, args.data_dir)
    train = split_dataset(dataset).train_interactions
    writer = BundleWriter(args.artifacts, args.version)
    two_tower = TwoTowerConfig(
        mixed_negatives=args.two_tower_mixed_negatives, logq_correction=not args.no_two_tower_logq
    )  # recorded in the manifest (recall.two_tower.training.config)
    info = build_recall(
        dataset, train, writer, two_tower=not args.no_two_tower, two_tower_config=two_tower
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
