"""The ranker's artifact: one ONNX file (dynamic batch) plus what serving needs to trust it.

    <bundle>/rank/model.onnx       inputs = the spec's fields (int64), output "probabilities"
    <bundle>/rank/feature_spec.json
    <bundle>/rank/weights.npz      the torch state dict (benchmarks, fine-tuning)
    <bundle>/rank/rank.json        tasks, fusion weights, input names, config, metrics
The component records the spec fingerprint; the scorer refuses a bundle whose spec differs from
the data's. Export checks torch vs ONNX Runtime on a real batch before anything is written.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cascade.artifacts import BundleWriter
from cascade.features import FeatureSpec
from cascade.rows import Rows, input_names
from services.rank.model import ModelConfig, RankModel

log = logging.getLogger(__name__)

COMPONENT = "rank"
OUTPUT = "probabilities"
PARITY_TOLERANCE = 1e-4
USER_SIDE = ("user", "history")  # entities sent once per request; items and context per candidate


def export_onnx(model: RankModel, spec: FeatureSpec, path: Path, example: Rows) -> Path:
    """Writes `model` as a single ONNX file whose batch dimension is dynamic."""
    names = input_names(spec)
    model.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:8])) for n in names)
    # The legacy exporter: dynamic_axes by input name exports this model reliably; silence its
    # deprecation warning, the graph it writes is checked for parity below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(names),
            output_names=[OUTPUT],
            # User fields and history may come as one row for all candidates (the model
            # broadcasts them): their row count is its own dimension.
            dynamic_axes={
                **{n: {0: "batch"} for n in names},
                **{f.name: {0: "user_rows"} for f in spec.fields if f.entity in USER_SIDE},
                OUTPUT: {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    return path


def onnx_probabilities(path: Path, rows: Rows, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: rows[i.name] for i in session.get_inputs()}
    return session.run([OUTPUT], feed)[0]


def check_parity(model: RankModel, spec: FeatureSpec, path: Path, rows: Rows) -> float:
    """Largest |torch - ONNX Runtime| over `rows`, and over the first row's user with every
    row's item sent as one user row (serving's form); raises when above PARITY_TOLERANCE."""
    with torch.no_grad():
        expected = model(*(torch.from_numpy(rows[n]) for n in input_names(spec))).numpy()
    gap = float(np.abs(onnx_probabilities(path, rows) - expected).max())
    user_side = {f.name for f in spec.fields if f.entity in USER_SIDE}
    one_user = {n: v[:1] if n in user_side else v for n, v in rows.items()}
    repeated = {
        n: np.repeat(v[:1], len(v), axis=0) if n in user_side else v for n, v in rows.items()
    }
    gap = max(
        gap,
        float(
            np.abs(onnx_probabilities(path, one_user) - onnx_probabilities(path, repeated)).max()
        ),
    )
    if gap > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export of the ranker differs from torch by {gap:.2e}")
    return gap


def load_torch(bundle) -> RankModel:
    """The bundle's ranker as a torch model (eval mode), from weights.npz and rank.json."""
    meta = bundle.load_json(COMPONENT, "rank.json")
    spec = FeatureSpec.from_json(bundle.file(COMPONENT, "feature_spec.json").read_text())
    config = dict(meta["config"]["model"])
    if config.get("context_fields") is not None:  # a JSON list
        config["context_fields"] = tuple(config["context_fields"])
    model = RankModel(spec, tuple(meta["tasks"]), ModelConfig(**config))
    weights = bundle.load_npz(COMPONENT, "weights.npz")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model.eval()


def write_component(
    writer: BundleWriter,
    model: RankModel,
    spec: FeatureSpec,
    dataset: str,
    train_config,
    model_config: ModelConfig,
    info: dict,
    example: Rows,
    mf_feature: bool = False,
    channel_feature: bool = False,
) -> None:
    """Exports, checks parity on `example` (real rows) and records the rank component.
    `mf_feature`: trained with mf_position (serving loads the bundle's MF model for it);
    `channel_feature`: trained on examples that carried recall's channel tags."""
    path = export_onnx(model, spec, writer.path(COMPONENT, "model.onnx"), example)
    gap = check_parity(model, spec, path, example)
    writer.add(COMPONENT, "model.onnx")
    # The torch weights too (npz, no pickle): benchmarks compare torch eager with ONNX Runtime,
    # and a later run can fine-tune from them.
    writer.save_npz(
        COMPONENT, "weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()}
    )
    writer.path(COMPONENT, "feature_spec.json").write_text(spec.to_json())
    writer.add(COMPONENT, "feature_spec.json")
    fusion = {t: float(train_config.fusion.get(t, 1.0)) for t in model.tasks}
    writer.save_json(
        COMPONENT,
        "rank.json",
        {
            "tasks": list(model.tasks),
            "fusion_weights": fusion,
            "inputs": list(input_names(spec)),
            "output": OUTPUT,
            "one_user_row": True,  # user fields and history may come once per request
            "mf_feature": mf_feature,
            "channel_feature": channel_feature,
            "config": {"train": asdict(train_config), "model": asdict(model_config)},
            "training": info,
            "onnx_parity_max_abs": gap,
        },
    )
    writer.set_component(
        COMPONENT,
        {
            "dataset": dataset,
            "version": writer.version,
            "feature_spec_fingerprint": spec.fingerprint,
            "tasks": list(model.tasks),
            "fusion_weights": fusion,
            "metrics": info.get("test", {}),
            # Position-bias corrections it was trained with (services/rank/debias.py).
            "debias": {
                "position_tower": bool(getattr(model_config, "position_tower", False)),
                "ips": bool(getattr(train_config, "ips", False)),
            },
            # Share of training rows shown with the item id unknown (services/rank/cold_start.py).
            "cold_start": {"item_id_dropout": float(getattr(train_config, "item_id_dropout", 0.0))},
        },
    )
    log.info("rank: exported %s (ONNX parity %.1e)", path, gap)
