"""Position-bias corrections: the position tower is fitted in training and absent from the served
graph; IPS weights are the inverse of the synthetic world's examination probability."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from cascade.artifacts import Bundle, BundleWriter
from cascade.data.synthetic import SyntheticConfig, examination, generate
from cascade.rows import input_names
from services.rank.debias import ips_weights, known_examination, position_ids
from services.rank.export import load_torch, onnx_probabilities, write_component
from services.rank.model import ModelConfig
from services.rank.train import TrainConfig, fit, labels, loss_weights, predict
from training.rank_train import prepare, train

from .conftest import MODEL, tiny

WORLD = SyntheticConfig(n_users=60, n_items=80, days=4, impressions_per_user=30, seed=2)
TASKS = ("click", "play")
TRAIN = TrainConfig(seed=0, batch_size=64, max_epochs=2, tasks=TASKS, fusion_scales=())
PAL = replace(MODEL, position_tower=True)


@pytest.fixture(scope="module")
def world():
    return generate(WORLD, progress=False)


@pytest.fixture(scope="module")
def pal(world, tmp_path_factory):
    """A ranker with the position tower and IPS, trained on the tiny world, in a bundle."""
    torch.set_num_threads(1)
    config = replace(TRAIN, ips=True)
    model, prepared, info = train(world, config, PAL)
    root = tmp_path_factory.mktemp("pal")
    writer = BundleWriter(root, "v1")
    write_component(writer, model, prepared.spec, "synthetic", config, PAL, info, prepared.test[0])
    writer.commit()
    return model, prepared, Bundle.open(root, "v1")


def test_position_ids_shift_slots_by_one_and_keep_zero_for_unknown():
    got = position_ids(np.array([-1, 0, 3, 9, 10, 42]), slots=10)
    np.testing.assert_array_equal(got, [0, 1, 4, 10, 10, 10])


def test_ips_weights_are_the_inverse_of_the_worlds_examination(world):
    propensity = known_examination(world)
    np.testing.assert_allclose(propensity, examination(WORLD))
    np.testing.assert_allclose(propensity, (1.0 + np.arange(10)) ** -0.8)
    position = np.array([0, 4, 9, -1, 4])
    clicked = np.array([[1, 0], [1, 1], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    weights = ips_weights(clicked, position, propensity)
    expected = np.array(
        [[1.0, 1.0], [5**0.8, 5**0.8], [10**0.8, 1.0], [1.0, 1.0], [1.0, 1.0]], np.float32
    )
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_training_weights_the_logged_positives_by_their_slot(world):
    prepared = prepare(world, replace(TRAIN, ips=True))
    rows = prepared.train[1]
    targets = labels(rows, TASKS)
    weights = loss_weights(replace(TRAIN, ips=True), world, rows, targets).numpy()
    slot = rows["position"].astype(np.int64)
    positive = targets[:, 0] > 0
    assert positive.sum() > 5 and len(np.unique(slot[positive])) > 2
    np.testing.assert_allclose(weights[positive, 0], (1.0 + slot[positive]) ** 0.8, rtol=1e-5)
    assert np.all(weights[~positive, 0] == 1.0)
    assert loss_weights(TRAIN, world, rows, targets) is None  # off by default


def test_ips_needs_a_world_that_knows_its_propensities():
    dataset = tiny()  # MovieLens-shaped: no examination model
    with pytest.raises(ValueError, match="only the synthetic world knows"):
        known_examination(dataset)
    with pytest.raises(ValueError, match="examination"):
        train(dataset, TrainConfig(seed=0, batch_size=32, max_epochs=1, ips=True), MODEL)


def test_the_position_tower_learns_the_slot_in_training(pal):
    model, prepared, _ = pal
    table = model.position_tower.table.weight.detach().numpy()
    assert np.count_nonzero(table[0]) == 0  # unknown slot: no logit
    assert np.abs(table[1:]).max() > 1e-3  # every logged slot got a gradient
    # Clicks are examined less further down the page: the tower's click logit falls with slot.
    assert table[1, 0] > table[10, 0]


def test_the_served_score_and_the_onnx_graph_never_read_the_position(pal):
    model, prepared, bundle = pal
    graph = onnx.load(str(bundle.file("rank", "model.onnx")))
    inputs = [i.name for i in graph.graph.input]  # the spec's fields it reads, nothing else
    assert set(inputs) <= set(input_names(prepared.spec)) and "item_id" in inputs
    assert not any(name.startswith("position") for name in inputs)
    assert not any("position_tower" in t.name for t in graph.graph.initializer)
    rows = prepared.test[0]
    served = predict(model, rows, prepared.spec)
    np.testing.assert_allclose(
        onnx_probabilities(bundle.file("rank", "model.onnx"), rows), served, atol=1e-4
    )
    original = model.position_tower.table.weight.detach().clone()
    with torch.no_grad():  # changing the tower changes nothing served
        model.position_tower.table.weight.add_(3.0)
    try:
        np.testing.assert_array_equal(predict(model, rows, prepared.spec), served)
        shown = torch.ones(len(rows["item_id"]), dtype=torch.int64)  # every row at slot 0
        trained = predict(model, rows, prepared.spec, positions=shown)
        assert np.all(trained > served)  # the training objective adds the tower's logit
    finally:
        with torch.no_grad():
            model.position_tower.table.weight.copy_(original)


def test_the_bundle_records_the_options_and_reloads_the_tower(pal):
    model, _, bundle = pal
    assert bundle.component("rank")["debias"] == {"position_tower": True, "ips": True}
    meta = bundle.load_json("rank", "rank.json")["config"]
    assert meta["train"]["ips"] is True and meta["model"]["position_tower"] is True
    loaded = load_torch(bundle)
    np.testing.assert_array_equal(
        loaded.position_tower.table.weight.detach().numpy(),
        model.position_tower.table.weight.detach().numpy(),
    )


def test_defaults_are_unchanged_a_plain_ranker_has_no_tower(world):
    prepared = prepare(world, TRAIN)
    model, _ = fit(prepared, TASKS, MODEL, TRAIN)
    assert model.position_tower is None
    assert ModelConfig().position_tower is False and TrainConfig().ips is False


def test_a_served_slice_without_a_users_mixed_labels_has_no_gauc():
    """The daily fine-tune evaluates small served slices: no user with both labels of a task
    (no shares at all) gives GAUC None, never an error that stops the job."""
    from services.rank.train import evaluate

    impressions = {
        "user_id": np.array([1, 1, 2, 2]),
        "click": np.array([True, False, True, False]),
        "share": np.array([True, True, False, False]),  # each user all one label
    }
    probabilities = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1], [0.3, 0.4]])
    result = evaluate(probabilities, impressions, ("click", "share"))
    assert result["click"]["GAUC"] == 1.0 and result["share"]["GAUC"] is None
    assert result["share"]["AUC"] is not None  # defined over all rows
