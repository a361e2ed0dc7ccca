"""The ranker network: shapes, per-field widths, ablation switches, seeded training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from cascade.rows import input_names
from services.rank.model import ModelConfig, RankModel
from services.rank.train import TrainConfig, fit, labels, predict

from .conftest import MODEL, TRAIN


def _inputs(trained, n=17):
    rows = trained.prepared.train[0]
    return [torch.from_numpy(rows[name][:n]) for name in input_names(trained.prepared.spec)]


def test_outputs_are_probabilities_per_task(trained):
    out = trained.model(*_inputs(trained))
    assert out.shape == (17, 2)
    assert torch.all((out > 0) & (out < 1))


def test_each_field_has_its_own_width_unless_ablated(trained):
    spec = trained.prepared.spec
    tables = trained.model.embeddings.tables
    ignored = trained.model.embeddings.ignored  # context fields the default model leaves out
    for field in spec.fields:
        if field.kind != "sequence" and field.name not in ignored:
            assert tables[field.name].embedding_dim == field.width
    assert ignored == {f.name for f in spec.of("context")} - {"mf_position"}
    plain = RankModel(
        spec, ("play",), ModelConfig(per_field_widths=False, attention=False, ple=False)
    )
    assert {t.embedding_dim for t in plain.embeddings.tables.values()} == {16}
    assert plain.attention is None and not hasattr(plain, "cgc")


def test_unknown_ids_use_the_zero_padding_row(trained):
    table = trained.model.embeddings.tables["item_id"]
    assert torch.count_nonzero(table.weight[0]) == 0


def test_training_is_deterministic_for_a_seed(trained):
    tasks = ("play", "like")
    first, info = fit(trained.prepared, tasks, MODEL, TRAIN)
    second, _ = fit(trained.prepared, tasks, MODEL, TRAIN)
    rows = trained.prepared.test[0]
    spec = trained.prepared.spec
    np.testing.assert_array_equal(predict(first, rows, spec), predict(second, rows, spec))
    assert info["best_validation_logloss"] == min(e["validation_logloss"] for e in info["epochs"])


def test_training_learns_a_planted_signal(trained):
    """Likes planted on even item ids: the trained model must rank them above odd ones."""

    def plant(part):
        rows, impressions = part
        return rows, {**impressions, "like": impressions["item_id"] % 2 == 0}

    p0 = trained.prepared
    prepared = replace(
        p0, train=plant(p0.train), validation=plant(p0.validation), test=plant(p0.test)
    )
    config = TrainConfig(seed=0, batch_size=16, max_epochs=12, patience=3, learning_rate=1e-2)
    model, _ = fit(prepared, ("like",), MODEL, config)
    p = predict(model, prepared.test[0], prepared.spec)[:, 0]
    y = labels(prepared.test[1], ("like",))[:, 0]
    assert p[y == 1].mean() > p[y == 0].mean() + 0.2
