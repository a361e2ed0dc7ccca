"""Trains rerank (`cascade train rerank`): its item embeddings, into the bundle component "rerank".

Rerank owns its similarity space: a truncated SVD of the training-period user x item matrix, columns
scaled by 1 / sqrt(item popularity) so that inner products of columns are co-consumption cosines.
Item vector = Sigma v_i over singular directions 2..dim+1, L2-normalised; row = item id, row 0
and items never consumed in training stay zero ("no embedding": dissimilar to all at serving).
numpy only: a randomized range finder (Halko et al. 2011), power iterations over sparse pairs.

    python -m services.rerank.train --dataset ml-100k --data-dir data --artifacts artifacts \
        [--version V] [--publish]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from cascade.artifacts import BundleWriter, add_training_arguments, publish
from cascade.data import load_dataset
from cascade.data.schema import Table
from cascade.data.split import split_dataset
from cascade.evaluation import UserItems
from cascade.features import build_spec

COMPONENT = "rerank"
VECTORS = "item_vectors.npz"
log = logging.getLogger(__name__)


def item_embeddings(
    train: Table, n_users: int, n_items: int, dim: int = 32, seed: int = 0
) -> np.ndarray:
    """(n_items, dim) float32 L2-normalised rows; zero rows for items without training plays."""
    pairs = UserItems.from_table(train, n_users, n_items)
    users = np.repeat(np.arange(n_users), pairs.lengths())
    items = pairs.items
    popularity = np.bincount(items, minlength=n_items).astype(np.float64)
    values = 1.0 / np.sqrt(popularity[items])  # X[u, i] = 1 / sqrt(pop_i)
    dim = max(1, min(dim, int((popularity > 0).sum()) - 2, n_users - 2))
    width = dim + 11  # one extra for the dropped first direction, plus oversampling

    def times(matrix: np.ndarray) -> np.ndarray:  # X @ matrix, (n_users, width)
        contributions = values[:, None] * matrix[items]
        return np.stack(
            [np.bincount(users, contributions[:, c], n_users) for c in range(matrix.shape[1])],
            axis=1,
        )

    def transposed_times(matrix: np.ndarray) -> np.ndarray:  # X^T @ matrix, (n_items, width)
        contributions = values[:, None] * matrix[users]
        return np.stack(
            [np.bincount(items, contributions[:, c], n_items) for c in range(matrix.shape[1])],
            axis=1,
        )

    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(times(rng.standard_normal((n_items, width))))
    for _ in range(3):  # power iterations sharpen the spectrum's head
        basis, _ = np.linalg.qr(transposed_times(basis))
        basis, _ = np.linalg.qr(times(basis))
    small = transposed_times(basis).T  # (width, n_items) = Q^T X
    _, sigma, vt = np.linalg.svd(small, full_matrices=False)
    # The first singular direction is popularity (every item loads positively on it) and would
    # make all cosines look alike; the next `dim` directions carry the taste structure.
    vectors = (vt[1 : dim + 1].T * sigma[1 : dim + 1]).astype(np.float64)  # (n_items, dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.where(norms > 1e-12, vectors / np.where(norms > 0, norms, 1.0), 0.0)
    vectors[popularity == 0] = 0.0
    vectors[0] = 0.0
    return vectors.astype(np.float32)


def build(
    dataset_name: str,
    data_dir: Path,
    artifacts: Path,
    version: str | None = None,
    dim: int = 32,
    do_publish: bool = False,
) -> Path:
    """Builds the embeddings on the per-user temporal training split and writes the component."""
    dataset = load_dataset(dataset_name, data_dir)
    train = split_dataset(dataset).train_interactions
    vectors = item_embeddings(train, dataset.n_users, dataset.n_items, dim)
    spec = build_spec(dataset)
    writer = BundleWriter(artifacts, version)
    writer.save_npz(COMPONENT, VECTORS, vectors=vectors)
    writer.save_json(COMPONENT, "feature_spec.json", spec.to_json())
    missing = int((np.linalg.norm(vectors[1:], axis=1) == 0).sum())
    writer.set_component(
        COMPONENT,
        {
            "dataset": dataset_name,
            "feature_spec": spec.fingerprint,
            "dim": int(vectors.shape[1]),
            "n_items": int(vectors.shape[0]),
            "items_without_embedding": missing,
            "method": "randomized truncated SVD of popularity-scaled user x item plays",
        },
    )
    folder = writer.commit()
    if do_publish:
        publish(artifacts, writer.version)
    log.info("rerank: %d x %d vectors (%d without) -> %s", *vectors.shape, missing, folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(parser)
    parser.add_argument(
        "--version", default=None, help="bundle version to write into (default: UTC time)"
    )
    parser.add_argument(
        "--dim",
        type=int,
        default=32,
        help="width of the item vectors used for diversity (default: 32)",
    )
    parser.add_argument("--publish", action="store_true", help="point artifacts/current at it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = build(
        args.dataset, args.data_dir, args.artifacts, args.version, args.dim, args.publish
    )
    print(folder)


if __name__ == "__main__":
    main()
