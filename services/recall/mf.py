"""Offline build of the MF channel: item vectors of a matrix-factorisation-family model and the
fold-in that turns a user's history into a query vector for the same FAISS inner-product search.

Small catalogs (up to `ease_max_items`) get EASE (Steck, 2019): the strongest closed-form model on
ml-100k (the baseline every stage is measured against). Item j's vector is column j of EASE's
weight matrix B and the user's query is the multi-hot of their history, so the inner product is
exactly EASE's score. Larger catalogs, where B's n x n matrices do not fit, get PureSVD
(Cremonesi et al., 2010): the top `svd_dim` right singular vectors V of the user-item matrix, item
vector V_j, query = sum of V_i over the history (score = x V V^T). Both fold in the whole history
at request time, so an online play changes the next answer without retraining. numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cascade.artifacts import BundleWriter
from cascade.baselines import EASE
from cascade.data.schema import Table
from services.recall.channels.mf import FOLD_IN, INFO_KEY, ITEM_INDEX, ITEM_VECTORS
from services.recall.index import IndexSettings, build_index, index_kind, save_index
from services.recall.tables import COMPONENT


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


def build_mf(
    train: Table,
    n_users: int,
    n_items: int,
    writer: BundleWriter,
    settings: MFSettings | None = None,
    index_settings: IndexSettings | None = None,
) -> dict:
    """Writes the item vectors, the fold-in and the FAISS index; returns {"mf": info}."""
    settings = settings or MFSettings()
    if n_items <= settings.ease_max_items:
        kind = "ease"
        vectors = fit_ease(train, n_users, n_items, settings.ease_l2)
        fold_in = np.empty((0, 0), dtype=np.float32)  # the identity: the query is the multi-hot
    else:
        kind = "pure_svd"
        vectors = fit_pure_svd(
            train, n_users, n_items, settings.svd_dim, settings.svd_power_iterations, settings.seed
        )
        fold_in = vectors
    writer.save_npz(COMPONENT, ITEM_VECTORS, vectors=vectors)
    writer.save_npz(COMPONENT, FOLD_IN, fold_in=fold_in)
    index = build_index(vectors[1:], index_settings or IndexSettings())
    save_index(index, writer.path(COMPONENT, ITEM_INDEX))
    writer.add(COMPONENT, ITEM_INDEX)
    info = {
        "model": kind,
        "dim": int(vectors.shape[1]),
        "n_items": int(n_items),
        "index_kind": index_kind(index),
        "settings": asdict(settings),
        "files": [ITEM_VECTORS, FOLD_IN, ITEM_INDEX],
    }
    return {INFO_KEY: info}
