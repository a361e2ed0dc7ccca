"""ONNX export: one file, dynamic batch, torch and ONNX Runtime agree to 1e-4."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cascade.rows import input_names
from services.rank.export import PARITY_TOLERANCE, export_onnx, load_torch, onnx_probabilities


def _torch(model, spec, rows):
    with torch.no_grad():
        return model(*(torch.from_numpy(rows[n]) for n in input_names(spec))).numpy()


def _random_rows(spec, n, seed):
    rng = np.random.default_rng(seed)
    rows = {}
    for f in spec.fields:
        shape = (n, spec.history_length) if f.kind == "sequence" else (n,)
        if f.kind == "multi":  # the channel tags have one slot per channel
            shape = (n, f.vocab_size - 1) if f.entity == "context" else (n, 6)
        rows[f.name] = rng.integers(0, f.vocab_size, shape).astype(np.int64)
    return rows


@pytest.fixture(scope="module")
def onnx_path(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(trained.model, trained.prepared.spec, path, trained.prepared.train[0])


@pytest.mark.parametrize("n", [1, 7, 300])
def test_random_batches_match_torch(trained, onnx_path, n):
    rows = _random_rows(trained.prepared.spec, n, seed=n)
    expected = _torch(trained.model, trained.prepared.spec, rows)
    got = onnx_probabilities(onnx_path, rows)
    assert got.shape == (n, 2)
    np.testing.assert_allclose(got, expected, atol=PARITY_TOLERANCE, rtol=0)


def test_real_batches_match_torch(trained, onnx_path):
    for rows in (trained.prepared.train[0], trained.prepared.test[0]):
        expected = _torch(trained.model, trained.prepared.spec, rows)
        np.testing.assert_allclose(
            onnx_probabilities(onnx_path, rows), expected, atol=PARITY_TOLERANCE, rtol=0
        )


def test_bundle_model_is_one_self_contained_file(trained):
    path = trained.bundle.file("rank", "model.onnx")
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "feature_spec.json",
        "model.onnx",
        "rank.json",
        "weights.npz",
    ]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic: any batch size


def test_torch_weights_in_the_bundle_rebuild_the_model(trained):
    model = load_torch(trained.bundle)
    rows = trained.prepared.test[0]
    np.testing.assert_array_equal(
        _torch(model, trained.prepared.spec, rows),
        _torch(trained.model, trained.prepared.spec, rows),
    )
