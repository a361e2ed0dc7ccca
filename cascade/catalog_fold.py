"""Folds the living catalogue (items uploaded while serving, on the event log) into training data.

The retrain job (training/retrain.py) builds the next bundle on the dataset plus these items, so its
recall tables (fresh, creator and category indexes, follows, co-occurrence, trending, MF) hold the
uploads and their plays, and the ranker's examples on them carry their creator, categories and
age. The feature spec stays the published one: an uploaded id is out of the models' vocabulary
(encoded as the unknown row), exactly as the serving stores encode it. The bundle carries the
uploads it folded (its `catalog` component), so every stage that loads it serves the same
catalogue without the event log (`load_bundle_uploads`) and keeps only later uploads in memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from cascade.artifacts import Bundle, BundleWriter
from cascade.backends import open_event_log
from cascade.data.schema import Dataset
from cascade.live_catalog import (
    UPLOADS,
    apply_items,
    categories_matrix,
    content_matrix,
    uploads_to_items,
)

CATALOG, UPLOADS_FILE = "catalog", "uploads.arrow"


def read_uploads(url: str) -> pa.Table:
    """The uploads an event log holds (read beside the running gateway)."""
    log = open_event_log(url, read_only=True)
    try:
        return log.read_records("uploads")
    finally:
        log.close()


def save_uploads(writer: BundleWriter, uploads: pa.Table) -> None:
    """Records the uploads a bundle was trained with (its `catalog` component)."""
    with pa.OSFile(str(writer.path(CATALOG, UPLOADS_FILE)), "wb") as sink:
        with pa.ipc.new_file(sink, UPLOADS) as out:
            out.write_table(uploads.select(UPLOADS.names).cast(UPLOADS))
    writer.add(CATALOG, UPLOADS_FILE)
    writer.set_component(CATALOG, {"uploads": uploads.num_rows})
    writer.commit()


def load_bundle_uploads(store, bundle: Bundle) -> int:
    """Gives a store opened on the dataset the uploads its bundle folded in (the same path a
    live upload takes, so their ids stay out of the models' vocabulary); returns how many were
    new to it. A bundle trained on the dataset alone has none."""
    if CATALOG not in bundle.manifest["components"]:
        return 0
    return apply_items(store, uploads_to_items(bundle_uploads(bundle)))


def bundle_uploads(bundle: Bundle) -> pa.Table:
    """The uploads `bundle` folded in (none for a bundle trained on the dataset alone)."""
    if CATALOG not in bundle.manifest["components"]:
        return UPLOADS.empty_table()
    with pa.memory_map(str(bundle.file(CATALOG, UPLOADS_FILE))) as source:
        return pa.ipc.open_file(source).read_all()


def with_uploads(dataset: Dataset, uploads: pa.Table | None) -> Dataset:
    """`dataset` with every logged upload it lacks appended to its items table (ids as the
    gateway assigned them; columns the upload has no value for are zero / empty)."""
    if uploads is None or not uploads.num_rows:
        return dataset
    uploads = uploads.select([n for n in UPLOADS.names if n in uploads.column_names])
    items = dataset.items
    ids = uploads["item_id"].to_numpy().astype(np.int64)
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)[~np.isin(ids[np.sort(first)], items["item_id"])]
    if not len(keep):
        return dataset
    given = {
        "item_id": ids[keep],
        "creator_id": uploads["creator_id"].to_numpy()[keep],
        "categories": categories_matrix([uploads["categories"].to_pylist()[i] for i in keep]),
        "upload_ts": uploads["upload_ms"].to_numpy()[keep] // 1000,
    }
    if "content" in items and "content" in uploads.column_names:
        contents = uploads["content"].to_pylist()
        given["content"] = content_matrix(
            [contents[i] or [] for i in keep], items["content"].shape[1]
        )
    keys = uploads["item_key"].to_pylist()
    extra = {}
    for column, values in items.items():
        if column in given:
            extra[column] = given[column].astype(values.dtype)
        elif column == "title":
            extra[column] = np.array([f"Upload {keys[i]}" for i in keep], dtype=values.dtype)
        else:
            extra[column] = np.zeros((len(keep), *values.shape[1:]), dtype=values.dtype)
    folded = {c: np.concatenate([items[c], extra[c]]) for c in items}
    return dataclasses.replace(dataset, items=folded)
