"""Data-parallel training: two workers on loopback Gloo take the same step as one process on the
same global batch (ranker, two-tower with gathered in-batch negatives), and the torchrun launcher
publishes a bundle only when every worker finished, naming the worker that did not."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cascade import distributed
from cascade.features import build_spec
from services.rank.model import ModelConfig, RankModel
from services.rank.train import TrainConfig, TrainingLogits, _tensors, labels, train_step
from services.recall.model import TwoTower
from services.recall.two_tower import (
    Batcher,
    Towers,
    TwoTowerConfig,
    batch_loss,
    make_examples,
    sampling_log_q,
)
from tests.conftest import make_tiny_dataset
from training.distributed import LaunchError, launch
from training.rank_train import prepare

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
BATCH = 32  # the global batch: 16 rows per worker
MODEL = ModelConfig(common_width=8, expert_hidden=16, expert_width=8, tower_hidden=8)
TOWERS = TwoTowerConfig(dim=8, hidden=16, temperature=0.1, mixed_negatives=8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(target, *args) -> None:
    """Runs target(rank, port, *args) in WORKERS spawned processes joined in one Gloo group;
    fails if one fails or they take over 300 s (a loaded machine)."""
    context = mp.get_context("spawn")
    port = _free_port()
    workers = [context.Process(target=target, args=(r, port, *args)) for r in range(WORKERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0] * WORKERS


def _join(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORKERS
    )


# --- ranker: one step, pointwise loss ----------------------------------------------------------


def _ranker_batch():
    """A tiny ranker (seeded) and the first global batch of its training rows."""
    dataset = make_tiny_dataset(seed=3, n_users=12, n_items=30, n_events=400)
    prepared = prepare(dataset, TrainConfig(seed=0))
    tasks = tuple(dataset.meta["tasks"])
    torch.manual_seed(0)
    model = RankModel(prepared.spec, tasks, MODEL)
    inputs = [x[:BATCH] for x in _tensors(prepared.train[0], prepared.spec)]
    targets = torch.from_numpy(labels(prepared.train[1], tasks))[:BATCH]
    return model, inputs, targets


def _ranker_step(model, inputs, targets, objective) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # the step is linear in the gradient
    train_step(objective, optimizer, inputs, targets, None, None)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ranker_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    model, inputs, targets = _ranker_batch()
    part = slice(rank * BATCH // WORKERS, (rank + 1) * BATCH // WORKERS)
    weights = _ranker_step(
        model, [x[part] for x in inputs], targets[part], distributed.wrap(TrainingLogits(model))
    )
    if rank == 0:
        torch.save(weights, out)
    dist.destroy_process_group()


def test_two_worker_ranker_step_equals_one_process_on_the_global_batch(tmp_path):
    out = tmp_path / "weights.pt"
    _spawn(_ranker_worker, str(out))
    model, inputs, targets = _ranker_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _ranker_step(model, inputs, targets, TrainingLogits(model))
    got = torch.load(out)
    assert got.keys() == expected.keys()
    moved = [k for k in expected if not torch.equal(expected[k], before[k])]
    assert len(moved) > len(expected) // 2  # the step changed most tensors
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


# --- two-tower: in-batch negatives gathered across workers ------------------------------------


def _towers_batch():
    dataset = make_tiny_dataset(seed=1, n_users=40, n_items=30, n_events=800)
    spec = build_spec(dataset)
    examples = make_examples(dataset.interactions, spec.history_length)
    torch.manual_seed(0)
    model = TwoTower(spec, dim=TOWERS.dim, hidden=TOWERS.hidden)
    log_q = torch.from_numpy(
        sampling_log_q(examples.item_ids, dataset.n_items, BATCH, TOWERS.mixed_negatives)
    )
    negatives = np.random.default_rng(0).integers(1, dataset.n_items, TOWERS.mixed_negatives)
    return model, Batcher(dataset, spec), examples, log_q, negatives


def _towers_step(rows: slice, towers: torch.nn.Module) -> tuple[float, dict, torch.Tensor]:
    """One SGD step of batch_loss on `rows`; the loss, the weights after, and the gathered
    item vectors of the batch's positives before the step."""
    model, batcher, examples, log_q, negatives = _towers_batch()
    if towers is None:
        towers = Towers(model)
    elif towers == "ddp":
        towers = distributed.wrap(Towers(model))
    item_ids = examples.item_ids[rows]
    with torch.no_grad():
        positives = distributed.gather(model.item_vector(**batcher.item_inputs(item_ids)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = batch_loss(
        towers,
        batcher,
        examples.user_ids[rows],
        item_ids,
        examples.histories[rows],
        negatives,
        log_q,
        TOWERS.temperature,
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return float(loss.detach()), weights, positives


def _towers_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    part = slice(rank * BATCH // WORKERS, (rank + 1) * BATCH // WORKERS)
    loss, weights, positives = _towers_step(part, "ddp")
    losses = distributed.gather_values(np.array([loss]))
    if rank == 0:
        torch.save({"losses": losses, "weights": weights, "positives": positives}, out)
    dist.destroy_process_group()


def test_two_tower_gathers_the_global_batch_as_negatives(tmp_path):
    out = tmp_path / "towers.pt"
    _spawn(_towers_worker, str(out))
    got = torch.load(out, weights_only=False)
    loss, expected, positives = _towers_step(slice(0, BATCH), None)
    # The gathered positives are the whole global batch's item vectors, in order ...
    torch.testing.assert_close(got["positives"], positives, rtol=1e-5, atol=1e-6)
    # ... so each worker's rows meet the same columns: the mean loss is the one-process loss,
    assert float(np.mean(got["losses"])) == pytest.approx(loss, rel=1e-5)
    # and the step (gradients through the gather, averaged) is the one-process step.
    for key in expected:
        torch.testing.assert_close(got["weights"][key], expected[key], rtol=1e-5, atol=1e-6)


def test_shard_splits_the_rows_in_equal_disjoint_parts(monkeypatch):
    assert np.array_equal(distributed.shard(10, seed=0), np.arange(10))  # one worker: all
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        parts.append(distributed.shard(10, seed=0))
    assert [len(p) for p in parts] == [3, 3, 3]  # the 10th row dropped: equal step counts
    assert len(np.unique(np.concatenate(parts))) == 9
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert np.array_equal(distributed.shard(10, seed=0), parts[1])  # seeded: the same again
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        distributed.local_batch(32)


# --- the launcher: all or nothing --------------------------------------------------------------


def _launch(tmp_path: Path, *extra: str) -> Path:
    artifacts = tmp_path / "artifacts"
    options = ["--artifacts", str(artifacts), "--version", "v1", "--publish", *extra]
    launch("tests.training.stage_for_launch", options, WORKERS, label="toy")
    return artifacts


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the workers import the toy stage from the repository


def test_launch_publishes_the_bundle_once_every_worker_finished(tmp_path, at_root):
    artifacts = _launch(tmp_path)
    manifest = json.loads((artifacts / "current" / "manifest.json").read_text())
    assert manifest["components"]["toy"]["workers"] == WORKERS
    assert sorted(manifest["files"]) == ["toy/first.json", "toy/second.json"]
    assert list((artifacts / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("--fail", "worker 1 of 2 failed: RuntimeError: the toy stage failed on purpose"),
        ("--kill", "worker 1 of 2 died"),
    ],
)
def test_a_failing_worker_fails_the_launch_and_publishes_nothing(tmp_path, at_root, how, message):
    with pytest.raises(LaunchError) as failure:
        _launch(tmp_path, how, "1")
    assert message in str(failure.value)
    assert "nothing was published" in str(failure.value)
    artifacts = tmp_path / "artifacts"
    assert not (artifacts / "v1").exists() and not (artifacts / "current").exists()
    assert list((artifacts / ".staging").iterdir()) == []  # the half-written staging removed


# --- the command line --------------------------------------------------------------------------


def test_nproc_is_refused_where_it_cannot_apply(tmp_path, capsys):
    from app.cli import main

    with pytest.raises(SystemExit, match="--nproc applies to recall, rank, prerank only"):
        main(["train", "rerank", "--nproc", "2", "--artifacts", str(tmp_path)])
    with pytest.raises(SystemExit, match="--nproc must be >= 1"):
        main(["train", "rank", "--nproc", "0"])
    with pytest.raises(SystemExit, match="needs --version"):
        main(["train", "rank", "--nproc", "2", "--artifacts", str(tmp_path)])


def test_loop_clock_rates_count_the_loop_only_and_cpu_apart_from_waiting():
    """Every stage's examples/s: examples over the epochs' wall seconds, and over their CPU
    seconds, which a wait (a descheduled process on a shared machine) does not add to."""
    import time

    clock = distributed.LoopClock()
    for _ in range(2):
        with clock.epoch():
            time.sleep(0.05)
        time.sleep(0.05)  # between epochs (validation, export): not the loop's
    report = clock.report(1000)
    assert 0.1 <= report["loop_seconds"] < 0.5  # a loaded machine oversleeps
    assert report["loop_cpu_seconds"] < 0.05
    assert report["examples_per_second"] == pytest.approx(1000 / clock.wall_seconds, rel=1e-3)
    assert report["examples_per_cpu_second"] > report["examples_per_second"]
