"""Writes the two-tower's serving artifacts into a bundle's "recall" component.

    recall/user_tower.onnx       the user tower, one file, dynamic batch (inputs named after fields)
    recall/item_tower.onnx       the item tower (inputs named after the item fields): an upload's
                                 vector from its creator, categories and content, id unknown
    recall/item_vectors.npz      vectors (n_items, dim) float32, row = item id, row 0 zeros
    recall/item_index.faiss      FAISS inner-product index over rows 1.. (see index.py)
    recall/two_tower.json        dims, index kind, the feature spec and its fingerprint, metrics

Serving (channels/two_tower.py) loads these with ONNX Runtime, numpy and FAISS only.
"""

from __future__ import annotations

import warnings

import torch

from cascade.artifacts import BundleWriter
from cascade.data.schema import MAX_CATEGORIES, Dataset
from cascade.features import FeatureSpec
from services.recall.channels.two_tower import (  # the names live torch-free, beside serving
    COMPONENT,
    INFO,
    ITEM_INDEX,
    ITEM_TOWER,
    ITEM_VECTORS,
    USER_TOWER,
)
from services.recall.index import IndexSettings, build_index, index_kind, save_index
from services.recall.model import ItemTower, TwoTower, UserTower
from services.recall.two_tower import Batcher, all_item_vectors


def example_user_inputs(spec: FeatureSpec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero inputs in the user tower's field order (what the exporter traces)."""
    inputs = [torch.zeros(batch, dtype=torch.int64) for _ in spec.of("user")]
    inputs += [
        torch.zeros(batch, spec.history_length, dtype=torch.int64) for _ in spec.of("history")
    ]
    return tuple(inputs)


def example_item_inputs(spec: FeatureSpec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero inputs in the item tower's field order (what the exporter traces)."""
    shapes = {"multi": (batch, MAX_CATEGORIES), "dense": None}
    inputs = []
    for f in spec.of("item"):
        if f.kind == "dense":
            inputs.append(torch.zeros(batch, f.vocab_size, dtype=torch.float32))
        else:
            inputs.append(torch.zeros(shapes.get(f.kind) or (batch,), dtype=torch.int64))
    return tuple(inputs)


def export_user_tower(model: TwoTower, spec: FeatureSpec, path) -> None:
    """ONNX with a dynamic batch axis, one file (no external data)."""
    _export(UserTower(model).eval(), example_user_inputs(spec), "user_vector", path)


def export_item_tower(model: TwoTower, spec: FeatureSpec, path) -> None:
    """The item tower as ONNX, as export_user_tower."""
    _export(ItemTower(model).eval(), example_item_inputs(spec), "item_vector", path)


def _export(tower: UserTower | ItemTower, example: tuple, output: str, path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65_536)
    dynamic = (tuple({0: batch} for _ in tower.fields),)  # one entry: forward(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            tower,
            example,
            input_names=list(tower.fields),
            output_names=[output],
            dynamic_shapes=dynamic,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if program is None:  # torch returns None only on its legacy (non-dynamo) path
        raise RuntimeError(f"torch.onnx.export gave no program for {path}")
    program.save(str(path), external_data=False)


def export_two_tower(
    model: TwoTower,
    spec: FeatureSpec,
    writer: BundleWriter,
    index_settings: IndexSettings,
    dataset: Dataset | None = None,
) -> dict:
    """Writes the four files and returns {"two_tower": info} to merge into the component info.

    Item vectors: `model.item_vectors` as train_two_tower left them, or recomputed from the
    item tower when the dataset (its item table) is passed.
    """
    if dataset is not None:
        item_vectors = all_item_vectors(model, Batcher(dataset, spec), dataset.n_items)
    else:
        item_vectors = model.item_vectors
    export_user_tower(model, spec, writer.path(COMPONENT, USER_TOWER))
    writer.add(COMPONENT, USER_TOWER)
    export_item_tower(model, spec, writer.path(COMPONENT, ITEM_TOWER))
    writer.add(COMPONENT, ITEM_TOWER)
    writer.save_npz(COMPONENT, ITEM_VECTORS, vectors=item_vectors)
    index = build_index(item_vectors[1:], index_settings)
    save_index(index, writer.path(COMPONENT, ITEM_INDEX))
    writer.add(COMPONENT, ITEM_INDEX)
    info = {
        "model": "two_tower",
        "dim": int(item_vectors.shape[1]),
        "n_items": int(item_vectors.shape[0]),
        "index_kind": index_kind(index),
        "user_inputs": list(UserTower(model).fields),
        "history_length": spec.history_length,
        "feature_spec_fingerprint": spec.fingerprint,
        "feature_spec": spec.to_json(),
        "training": getattr(model, "metrics", {}),
        "files": [USER_TOWER, ITEM_TOWER, ITEM_VECTORS, ITEM_INDEX, INFO],
    }
    writer.save_json(COMPONENT, INFO, info)
    return {"two_tower": {k: v for k, v in info.items() if k != "feature_spec"}}
