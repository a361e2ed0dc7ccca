"""Trains the pre-ranker: distils a student from the bundle's rank teacher
(services/prerank/distill.py) over real recall outputs (training/distill_world.py) and exports it
(services/prerank/export.py).

    python -m training.prerank_train --dataset ml-100k --data-dir data --artifacts artifacts \
        --version V [--publish] [--variant distilled_listwise]

The bundle V must already hold "recall" and "rank" (`cascade train recall`, `cascade train rank`
into the same --version); this writes "prerank" into it. `cascade train prerank` runs it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from cascade import distributed
from cascade.artifacts import BundleWriter, add_training_arguments, publish
from cascade.data.schema import Dataset
from cascade.profiles import DEFAULT
from services.prerank.distill import (
    DEFAULT_VARIANT,
    VARIANTS,
    DistillConfig,
    item_vectors,
    teacher_embeddings,
    train_student,
    variant_config,
)
from services.prerank.export import write_component
from training.distill_world import open_world, training_requests


def distill_into_bundle(
    dataset: Dataset | str,  # a loaded dataset, or its name (loaded from data_dir)
    data_dir: Path,
    artifacts: Path,
    version: str,
    config: DistillConfig,
    publish_it: bool = False,
    warm_start: dict[str, np.ndarray] | None = None,
    profile: str = DEFAULT,
) -> tuple[Path, dict]:
    """Distils a student from the bundle's teacher and writes the "prerank" component into it;
    returns the bundle folder and the training info. `warm_start`: a published student's weights
    to continue from (continuous training) instead of the teacher's embeddings. `profile`: whose
    recall gives the requests' candidates."""
    world = open_world(dataset, data_dir, artifacts, version, profile)
    requests = training_requests(world, config)
    if warm_start is None:
        teacher, initial = teacher_embeddings(world.bundle.load_npz("rank", "weights.npz")), None
    else:
        teacher, initial = None, {k: torch.from_numpy(v) for k, v in warm_start.items()}
    model, info = train_student(requests, world.dataset, world.spec, config, teacher, initial)
    world.merger.close()
    if not distributed.is_writer():  # worker 0 exports and writes
        return world.bundle.folder, info
    writer = BundleWriter(artifacts, world.bundle.version)
    vectors = item_vectors(model, world.dataset, world.spec)
    known = world.store.known_items(np.arange(world.dataset.n_items))
    write_component(
        writer,
        model,
        world.spec,
        world.dataset,
        vectors,
        known,
        world.bundle.component("rank")["version"],
        info,
        requests,
    )
    writer.commit()
    if publish_it:
        publish(artifacts, writer.version)
    return writer.folder, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser)
    parser.add_argument("--version", default="current", help="bundle holding recall + rank")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default=DEFAULT_VARIANT,
        help="the student's training loss: hard labels only, distilled from the ranker, or "
        f"distilled plus a listwise term (default: {DEFAULT_VARIANT})",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--publish", action="store_true", help="point artifacts/current at it")
    parser.add_argument(
        "--epochs",
        type=int,
        default=DistillConfig.epochs,
        help=f"passes over the requests (default: {DistillConfig.epochs})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DistillConfig.threads,
        help=f"torch threads per worker (default: {DistillConfig.threads})",
    )
    parser.add_argument(
        "--profile",
        default=DEFAULT,
        help="the profile whose recall the examples ask (its channel quotas and the gateway's "
        "recall count; training/served_recall.py; default: default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("onnxscript", "onnx_ir", "faiss.loader"):  # chatty at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = variant_config(
        args.variant, DistillConfig(seed=args.seed, epochs=args.epochs, threads=args.threads)
    )
    folder, _ = distill_into_bundle(
        args.dataset,
        args.data_dir,
        args.artifacts,
        args.version,
        config,
        args.publish,
        profile=args.profile,
    )
    print(f"prerank component ({args.variant}) written to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
