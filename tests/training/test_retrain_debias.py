"""The daily fine-tune keeps the ranker's debiasing: a ranker trained with the position tower and
IPS is fine-tuned on the served impressions' slots with the same weighting."""

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
MODEL = ModelConfig(
    common_width=8, expert_hidden=16, expert_width=8, tower_hidden=8, position_tower=True
)
TRAIN = TrainConfig(seed=0, batch_size=64, max_epochs=1, fusion_scales=(), ips=True)


def test_the_fine_tune_trains_the_tower_on_served_slots_with_ips(tmp_path):
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
    report = retrain(
        artifacts, Base.of(world), events, impressions, "day2", config, publish_it=False
    )
    assert report["rank"]["served_rows"] == 4  # the other 4 are the publish gate's
    new, old = Bundle.open(artifacts, "day2"), Bundle.open(artifacts, "v1")
    assert new.component("rank")["debias"] == {"position_tower": True, "ips": True}
    meta = new.load_json("rank", "rank.json")["config"]
    assert meta["train"]["ips"] is True and meta["model"]["position_tower"] is True
    key = "position_tower.table.weight"
    before, after = old.load_npz("rank", "weights.npz")[key], new.load_npz("rank", "weights.npz")
    assert not np.array_equal(after[key][1:5], before[1:5])  # the served slots 0..3 moved it
    assert np.count_nonzero(after[key][0]) == 0
