"""The student's serving artifacts in a bundle's "prerank" component, checked before they land.

    prerank/user_tower.onnx     user fields + history (int64, dynamic batch) -> "user_vector"
    prerank/item_vectors.npz    vectors (n_items, dim + 1) float32, row = item id, row 0 zeros;
                                known (n_items,) bool: ids the catalog holds
    prerank/feature_spec.json   the spec the towers were trained on
    prerank/weights.npz         the torch state dict (fine-tuning, benchmarks)
    prerank/prerank.json        config, training info, parity, teacher version
The component records teacher_version (the rank component it was distilled from) and the spec
fingerprint: serving warns on the first and refuses on the second.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from cascade.artifacts import BundleWriter
from cascade.features import FeatureSpec
from services.prerank.model import Student, UserTower
from services.prerank.requests import Requests

log = logging.getLogger(__name__)

COMPONENT = "prerank"
USER_TOWER = "user_tower.onnx"
ITEM_VECTORS = "item_vectors.npz"
OUTPUT = "user_vector"
PARITY_TOLERANCE = 1e-4


def user_inputs(spec: FeatureSpec, user_rows: dict, history: np.ndarray) -> dict[str, np.ndarray]:
    """The user tower's inputs by name from encoded user fields and (n, L) history."""
    (history_field,) = spec.of("history")
    inputs = {f.name: np.ascontiguousarray(user_rows[f.name], np.int64) for f in spec.of("user")}
    inputs[history_field.name] = np.ascontiguousarray(history, np.int64)
    return inputs


def export_user_tower(model: Student, path: Path, example: dict[str, np.ndarray]) -> Path:
    """One ONNX file (no external data) whose batch dimension is dynamic."""
    tower = UserTower(model).eval()
    args = tuple(torch.from_numpy(example[n][:4]) for n in tower.fields)
    # The legacy exporter with dynamic_axes by input name (it matches torch to 1e-6 and exports
    # much faster than the dynamo exporter); its deprecation warning is silenced, parity is
    # checked below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            args,
            str(path),
            input_names=list(tower.fields),
            output_names=[OUTPUT],
            dynamic_axes={**{n: {0: "batch"} for n in tower.fields}, OUTPUT: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def check_parity(model: Student, path: Path, example: dict[str, np.ndarray]) -> float:
    """Largest |torch - ONNX Runtime| of the user vectors; raises above PARITY_TOLERANCE."""
    import onnxruntime as ort

    tower = UserTower(model).eval()
    with torch.no_grad():
        expected = tower(*(torch.from_numpy(example[n]) for n in tower.fields)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {n: example[n] for n in tower.fields})[0]
    gap = float(np.abs(got - expected).max())
    if gap > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export of the student's user tower differs by {gap:.2e}")
    return gap


def example_inputs(spec: FeatureSpec, dataset, requests: Requests, n: int = 64) -> dict:
    """Real user-tower inputs: the first n training requests."""
    from cascade.features import encode_by_id, lookup

    users = encode_by_id(spec, "user", dataset.users, "user_id", dataset.n_users)
    ids = requests.user_ids[:n]
    return user_inputs(spec, lookup(users, ids), requests.history[:n])


def write_component(
    writer: BundleWriter,
    model: Student,
    spec: FeatureSpec,
    dataset,
    vectors: np.ndarray,
    known: np.ndarray,
    teacher_version: str,
    info: dict,
    requests: Requests,
) -> None:
    """Exports, checks parity on real training requests and records the prerank component.
    `dataset` is the Dataset (its name is recorded)."""
    example = example_inputs(spec, dataset, requests)
    path = export_user_tower(model, writer.path(COMPONENT, USER_TOWER), example)
    gap = check_parity(model, path, example)
    writer.add(COMPONENT, USER_TOWER)
    writer.save_npz(COMPONENT, ITEM_VECTORS, vectors=vectors, known=known.astype(bool))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.save_npz(COMPONENT, "weights.npz", **state)
    writer.path(COMPONENT, "feature_spec.json").write_text(spec.to_json())
    writer.add(COMPONENT, "feature_spec.json")
    meta = {
        "teacher_version": teacher_version,
        "user_inputs": list(UserTower(model).fields),
        "output": OUTPUT,
        "dim": int(vectors.shape[1]),
        "training": info,
        "onnx_parity_max_abs": gap,
    }
    writer.save_json(COMPONENT, "prerank.json", meta)
    writer.set_component(
        COMPONENT,
        {
            "dataset": dataset.name,
            "version": writer.version,
            "teacher_version": teacher_version,
            "feature_spec_fingerprint": spec.fingerprint,
            "dim": int(vectors.shape[1]),
            "n_items": int(vectors.shape[0]),
        },
    )
    log.info("prerank: exported %s (ONNX parity %.1e, teacher %s)", path, gap, teacher_version)
