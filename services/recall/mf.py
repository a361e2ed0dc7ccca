"""Offline build of the MF channel: item vectors of a matrix-factorisation-family model and the
fold-in that turns a user's history into a query vector for the same FAISS inner-product search.

Small catalogs (up to `ease_max_items`) get EASE (Steck, 2019): the strongest closed-form model on
ml-100k (the baseline every stage is measured against). Item j's vector is column j of EASE's
weight matrix B and the user's query is the multi-hot of their history, so the inner product is
exactly EASE's score. Larger catalogs, where B's n x n matrices do not fit, get PureSVD
(Cremonesi et al., 2010): the top `svd_dim` right singular vectors V of the user-item matrix, item
vector V_j, query = sum of V_i over the history (score = x V V^T). Both fold in the whole history
at request time, so an online play changes the next answer without retraining. numpy only.
The fits themselves live in cascade/mf.py (rank's MF position feature refits them per fold).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from cascade.artifacts import BundleWriter
from cascade.data.schema import Table
from cascade.mf import (
    FOLD_IN,
    INFO_KEY,
    ITEM_INDEX,
    ITEM_VECTORS,
    MFSettings,
    fit_ease,
    fit_pure_svd,
)
from services.recall.index import IndexSettings, build_index, index_kind, save_index
from services.recall.tables import COMPONENT


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
