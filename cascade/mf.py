"""The MF channel's model fits and artifact names, shared by recall (which builds and serves the
channel, services/recall/mf.py) and rank (whose MF position feature refits them out of fold,
cascade/context_fields.py): EASE item vectors for small catalogs, PureSVD for large ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.baselines import EASE
from cascade.data.schema import Table

# Artifact names in the bundle's recall component.
COMPONENT = "recall"
INFO_KEY = "mf"
ITEM_VECTORS = "mf_item_vectors.npz"
FOLD_IN = "mf_fold_in.npz"
ITEM_INDEX = "mf_index.faiss"


@dataclass(frozen=True)
class MFSettings:
    ease_max_items: int = 4_000  # EASE up to this catalog size (index dim = n_items), else SVD
    ease_l2: float = 500.0  # EASE's lambda (the baseline's, tuned on a validation slice)
    svd_dim: int = 128  # PureSVD rank
    svd_power_iterations: int = 4  # randomized SVD: more iterations, closer to the exact factors
    seed: int = 0


def fit_ease(train: Table, n_users: int, n_items: int, l2: float) -> np.ndarray:
    """(n_items, n_items) item vectors by id: row j = column j of EASE's B (row 0 zeros)."""
    weights = EASE(l2=l2).fit(train, n_users, n_items).weights
    vectors = np.ascontiguousarray(weights.T, dtype=np.float32)
    vectors[0] = 0.0
    return vectors


def fit_pure_svd(
    train: Table, n_users: int, n_items: int, dim: int, power_iterations: int, seed: int
) -> np.ndarray:
    """(n_items, dim) right singular vectors of the binary user-item matrix (randomized SVD on
    the interaction list: memory O((n_users + n_items) * dim), never the dense matrix)."""
    keys = np.unique(train["user_id"].astype(np.int64) * n_items + train["item_id"])
    users, items = keys // n_items, keys % n_items
    dim = max(1, min(dim, n_items - 1, n_users - 1))

    def x_times(m: np.ndarray) -> np.ndarray:  # X @ m, X (n_users, n_items) binary
        out = np.zeros((n_users, m.shape[1]))
        np.add.at(out, users, m[items])
        return out

    def xt_times(m: np.ndarray) -> np.ndarray:  # X^T @ m
        out = np.zeros((n_items, m.shape[1]))
        np.add.at(out, items, m[users])
        return out

    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(x_times(rng.standard_normal((n_items, dim + 10))))[0]
    for _ in range(power_iterations):
        basis = np.linalg.qr(x_times(np.linalg.qr(xt_times(basis))[0]))[0]
    small = xt_times(basis).T  # (dim + 10, n_items) = basis^T X
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    vectors = vt[:dim].T.astype(np.float32)  # (n_items, dim)
    vectors[0] = 0.0
    return np.ascontiguousarray(vectors)
