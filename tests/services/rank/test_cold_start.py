"""Item-id dropout: row 0 (the unknown id an upload is served with) learns to score an item from
its metadata; without the option training is untouched and row 0 stays the zero padding row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cascade.artifacts import Bundle, BundleWriter
from cascade.data.synthetic import SyntheticConfig, generate
from cascade.rows import input_names
from services.rank.cold_start import ItemIdDropout
from services.rank.export import write_component
from services.rank.train import TrainConfig, fit, predict
from training.rank_train import prepare

from .conftest import MODEL

WORLD = SyntheticConfig(n_users=60, n_items=80, days=4, impressions_per_user=30, seed=2)
TASKS = ("click", "play")
TRAIN = TrainConfig(
    seed=0, batch_size=64, max_epochs=4, learning_rate=1e-2, tasks=TASKS, fusion_scales=()
)
GOOD_CREATOR = 3  # the creator with the most logged impressions in WORLD


@pytest.fixture(scope="module")
def creator_world():
    """The tiny world's rows, relabelled so that exactly the good creator's items are played:
    what an unseen item's score can learn from is its creator."""
    torch.set_num_threads(1)
    world = generate(WORLD, progress=False)
    prepared = prepare(world, TRAIN)
    creator = np.zeros(world.n_items, np.int64)
    creator[world.items["item_id"]] = world.items["creator_id"]

    def relabel(part):
        rows, impressions = part
        good = creator[impressions["item_id"]] == GOOD_CREATOR
        return rows, {**impressions, "click": good, "play": good}

    prepared = replace(
        prepared,
        train=relabel(prepared.train),
        validation=relabel(prepared.validation),
        test=relabel(prepared.test),
    )
    return prepared, creator


def unknown_items(rows: dict) -> dict:
    """The rows as serving builds them for uploads: id and MF position unknown (row 0)."""
    return {
        **rows,
        "item_id": np.zeros_like(rows["item_id"]),
        "mf_position": np.zeros_like(rows["mf_position"]),
    }


def test_dropout_teaches_row_zero_to_score_an_unknown_item_by_its_creator(creator_world, tmp_path):
    prepared, creator = creator_world
    config = replace(TRAIN, item_id_dropout=0.2)
    model, info = fit(prepared, TASKS, MODEL, config)
    table = model.embeddings.tables["item_id"].weight.detach().numpy()
    first = model.embeddings.first_order["item_id"].weight.detach().numpy()
    assert np.abs(table[0]).max() > 1e-2 and abs(first[0, 0]) > 1e-3  # moved off the zero init
    rows, impressions = prepared.test
    good = creator[impressions["item_id"]] == GOOD_CREATOR
    assert 0 < good.sum() < len(good)
    unseen = predict(model, unknown_items(rows), prepared.spec)[:, 0]
    # The good creator's upload scores like its known items, every other creator's far below.
    assert unseen[good].min() > 0.5 > unseen[~good].max()
    # Recorded in the bundle: rank.json's training config and the manifest.
    writer = BundleWriter(tmp_path, "v1")
    write_component(writer, model, prepared.spec, "synthetic", config, MODEL, info, rows)
    writer.commit()
    bundle = Bundle.open(tmp_path, "v1")
    assert bundle.component("rank")["cold_start"] == {"item_id_dropout": 0.2}
    assert bundle.load_json("rank", "rank.json")["config"]["train"]["item_id_dropout"] == 0.2


def test_without_dropout_row_zero_stays_the_zero_padding_row(creator_world):
    prepared, _ = creator_world
    assert TrainConfig().item_id_dropout == 0.0  # off by default
    model, _ = fit(prepared, TASKS, MODEL, TRAIN)
    for tables in (model.embeddings.tables, model.embeddings.first_order):
        assert tables["item_id"].padding_idx == 0
        assert np.count_nonzero(tables["item_id"].weight.detach().numpy()[0]) == 0


def test_the_dropout_is_seeded_joint_and_leaves_other_inputs_alone():
    names = ("user_id", "item_id", "creator_id", "mf_position", "history")
    n = 4000
    inputs = [torch.arange(1, n + 1).reshape(n, 1).expand(n, 2)[:, 0].clone() for _ in names]
    first = ItemIdDropout(names, 0.1, seed=5)(inputs)
    again = ItemIdDropout(names, 0.1, seed=5)(inputs)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    dropped = first[1] == 0
    assert 0.08 < dropped.float().mean() < 0.12
    assert torch.equal(first[3] == 0, dropped)  # id and MF position go together
    for i in (0, 2, 4):
        assert torch.equal(first[i], inputs[i])
    off = ItemIdDropout(names, 0.0, seed=5)
    assert off(inputs) is inputs  # p = 0: the batch as it was, no draw


def test_the_share_must_be_a_probability_below_one():
    with pytest.raises(ValueError, match="item_id_dropout"):
        TrainConfig(item_id_dropout=1.0)
    with pytest.raises(ValueError, match="item_id_dropout"):
        TrainConfig(item_id_dropout=-0.1)


def test_every_input_the_model_reads_by_id_is_dropped(creator_world):
    """An upload's item_id and mf_position are both unknown at serving; other item fields are its
    own. The dropout must cover exactly the spec's id-keyed inputs."""
    prepared, _ = creator_world
    names = input_names(prepared.spec)
    dropout = ItemIdDropout(names, 0.5, seed=0)
    assert [names[i] for i in dropout.columns] == ["item_id", "mf_position"]
