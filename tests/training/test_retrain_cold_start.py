"""The daily fine-tune keeps the ranker's item-id dropout: a ranker trained with it is fine-tuned
with the same share, recorded in the new bundle, and its unknown-id row keeps learning."""

from __future__ import annotations

import numpy as np
import torch

from cascade.artifacts import Bundle, BundleWriter, publish
from cascade.data.synthetic import SyntheticConfig, generate
from services.rank.export import write_component
from services.rank.fine_tune import FineTuneConfig
from services.rank.model import ModelConfig
from services.rank.train import TrainConfig
from tests.training.test_retrain import tiny_log
from training.rank_train import train
from training.retrain import Base, RetrainConfig, read_log, retrain

WORLD = SyntheticConfig(n_users=60, n_items=80, days=4, impressions_per_user=30, seed=2)
MODEL = ModelConfig(common_width=8, expert_hidden=16, expert_width=8, tower_hidden=8)
TRAIN = TrainConfig(seed=0, batch_size=64, max_epochs=1, fusion_scales=(), item_id_dropout=0.5)


def test_the_fine_tune_keeps_the_item_id_dropout(tmp_path):
    torch.set_num_threads(1)
    world = generate(WORLD, progress=False)
    model, prepared, info = train(world, TRAIN, MODEL)
    artifacts = tmp_path / "artifacts"
    writer = BundleWriter(artifacts, "v1")
    write_component(writer, model, prepared.spec, "synthetic", TRAIN, MODEL, info, prepared.test[0])
    writer.commit()
    publish(artifacts, "v1")
    events, impressions = read_log(tiny_log(tmp_path / "log", world))
    # any gate verdict ships it: this test is about what the fine-tune learns, not the gate
    config = RetrainConfig(
        recall_tables=False, prerank_epochs=0, rank=FineTuneConfig(gate_tolerance=float("inf"))
    )
    retrain(artifacts, Base.of(world), events, impressions, "day2", config, publish_it=False)
    new, old = Bundle.open(artifacts, "day2"), Bundle.open(artifacts, "v1")
    assert new.component("rank")["cold_start"] == {"item_id_dropout": 0.5}
    assert new.load_json("rank", "rank.json")["config"]["train"]["item_id_dropout"] == 0.5
    key = "embeddings.tables.item_id.weight"
    before, after = old.load_npz("rank", "weights.npz")[key], new.load_npz("rank", "weights.npz")
    assert np.count_nonzero(before[0]) > 0  # learnt in training
    assert not np.array_equal(after[key][0], before[0])  # and further in the fine-tune
