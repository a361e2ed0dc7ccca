"""Export: the ONNX user tower matches torch, and the component records its teacher and spec."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from services.prerank.export import COMPONENT, OUTPUT, PARITY_TOLERANCE, example_inputs
from services.prerank.model import UserTower


def test_onnx_user_tower_matches_torch_on_any_batch_size(distilled):
    world, r = distilled.world, distilled.requests
    path = distilled.bundle.file(COMPONENT, "user_tower.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tower = UserTower(distilled.model).eval()
    inputs = example_inputs(world.spec, world.dataset, r)
    rng = np.random.default_rng(0)
    inputs["history"] = rng.integers(0, world.dataset.n_items, inputs["history"].shape)
    for n in (1, 5, len(r.user_ids)):
        feed = {k: v[:n] for k, v in inputs.items()}
        got = session.run([OUTPUT], feed)[0]
        with torch.no_grad():
            expected = tower(*(torch.from_numpy(feed[f]) for f in tower.fields)).numpy()
        assert got.shape == (n, distilled.model.config.dim + 1)
        np.testing.assert_allclose(got, expected, atol=PARITY_TOLERANCE, rtol=0)
    np.testing.assert_array_equal(got[:, -1], 1.0)  # the bias column's partner


def test_component_records_teacher_and_spec(distilled):
    info = distilled.bundle.component(COMPONENT)
    assert info["teacher_version"] == distilled.bundle.component("rank")["version"] == "v1"
    assert info["feature_spec_fingerprint"] == distilled.world.spec.fingerprint
    table = distilled.bundle.load_npz(COMPONENT, "item_vectors.npz")
    assert table["vectors"].shape == (distilled.world.dataset.n_items, info["dim"])
    assert not table["known"][0] and table["known"][1:].all()
    assert distilled.bundle.load_json(COMPONENT, "prerank.json")["onnx_parity_max_abs"] < 1e-4
