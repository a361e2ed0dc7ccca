"""The Recall server for real: a bundle built from a hand-made world, served on 127.0.0.1:0."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cascade.artifacts import ArtifactError, BundleWriter, publish
from cascade.candidates import channel_bit, from_proto
from cascade.client import ClientSettings, field_violations, make_channel
from cascade.data.schema import save
from cascade.data.split import split_dataset
from cascade.server import ServerSettings
from cascade.v1 import common_pb2, recall_pb2, recall_pb2_grpc
from services.recall.server import RecallSettings, open_recall, start
from services.recall.train import build_recall
from services.recall.two_tower import TwoTowerConfig
from tests.services.recall.conftest import make_recall_world

pytestmark = pytest.mark.timeout(60)
DAY = 86_400
NOW_MS = 60 * DAY * 1000


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recall")
    world = make_recall_world()
    save(world, root / "data" / world.name)
    train = split_dataset(world).train_interactions
    writer = BundleWriter(root / "artifacts", "v1")
    config = TwoTowerConfig(dim=8, hidden=16, epochs=1, batch_size=8)
    build_recall(world, train, writer, two_tower_config=config, progress=False)
    publish(root / "artifacts", "v1")
    return root / "data", root / "artifacts"


def settings_for(artifacts: tuple[Path, Path], **overrides) -> RecallSettings:
    data_dir, root = artifacts
    return RecallSettings(
        server=ServerSettings(port=0, metrics_port=-1, grace_s=0.5),
        artifacts=root,
        data_dir=data_dir,
        default_count=10,
        max_count=50,
        fresh_window_s=30 * DAY,
        **overrides,
    )


@pytest.fixture(scope="module")
def recall(artifacts) -> Iterator[tuple[recall_pb2_grpc.RecallStub, object]]:
    running = start(settings_for(artifacts))
    service = running.service
    channel = make_channel(running.address, ClientSettings(timeout_s=5.0, max_attempts=1))
    yield recall_pb2_grpc.RecallStub(channel), service
    channel.close()
    running.stop(0.5)


def ask(stub, user: int, recent=(), count: int = 0, time_ms: int = NOW_MS):
    user_context = common_pb2.UserContext(
        user_id=user, recent_item_ids=list(recent), request_time_ms=time_ms
    )
    return stub.Recall(recall_pb2.RecallRequest(user=user_context, count=count))


def test_answers_with_candidates_and_per_channel_reports(recall):
    stub, _ = recall
    response = ask(stub, 1, recent=[7])
    candidates = from_proto(response.candidates)
    assert 0 < len(candidates.item_ids) <= 10  # the configured default count
    ids = candidates.item_ids.tolist()
    assert 1 not in ids and 7 not in ids  # the training play and the request's recent item
    assert candidates.channel_masks[ids.index(8)] & channel_bit("item_cf")  # 7 -> 8 in training
    assert response.model_version == "v1"
    reports = {common_pb2.Channel.Name(r.channel): r for r in response.channels}
    names = ("mf", "two_tower", "item_cf", "profile", "social", "fresh", "popular")
    assert set(reports) == {f"CHANNEL_{n.upper()}" for n in names}
    assert reports["CHANNEL_TWO_TOWER"].status == "ok"
    assert sum(r.kept for r in response.channels) == len(candidates.item_ids)
    assert np.all(candidates.channel_masks > 0)


def test_unknown_user_gets_the_cold_path(recall):
    stub, _ = recall
    response = ask(stub, 999, count=5)
    candidates = from_proto(response.candidates)
    assert len(candidates.item_ids) == 5
    status = {common_pb2.Channel.Name(r.channel): r.status for r in response.channels}
    assert [status[f"CHANNEL_{n}"] for n in ("ITEM_CF", "PROFILE", "SOCIAL")] == ["empty"] * 3
    assert np.any(candidates.channel_masks & channel_bit("popular"))


def test_feedback_play_reaches_item_cf_at_once_and_is_filtered(recall):
    stub, service = recall
    before = from_proto(ask(stub, 6, count=50).candidates)
    assert 7 in before.item_ids  # user 6 has not consumed item 7 yet
    service.state.store.record(np.array([6]), np.array([7]), np.array([NOW_MS // 1000]), ["play"])
    response = ask(stub, 6, count=50)
    after = from_proto(response.candidates)
    assert 7 not in after.item_ids  # consumed now
    cf = after.channel_masks & channel_bit("item_cf") > 0
    assert 8 in after.item_ids[cf]  # 7's co-consumed neighbour, from the play just recorded


def test_answers_without_a_failed_channel(recall):
    stub, service = recall
    broken = next(c for c in service.merger.channels if c.name == "item_cf")
    original = broken.retrieve
    broken.retrieve = lambda context, k: (_ for _ in ()).throw(RuntimeError("table lost"))
    try:
        response = ask(stub, 1, recent=[7])
    finally:
        broken.retrieve = original
    status = {common_pb2.Channel.Name(r.channel): r.status for r in response.channels}
    assert status["CHANNEL_ITEM_CF"] == "error"
    candidates = from_proto(response.candidates)
    assert len(candidates.item_ids) >= 5
    assert not np.any(candidates.channel_masks & channel_bit("item_cf"))


@pytest.mark.parametrize(
    ("count", "recent", "user", "field"),
    [(51, (), 1, "count"), (5, (0,), 1, "user.recent_item_ids"), (5, (), -3, "user.user_id")],
)
def test_bad_input_is_invalid_argument_naming_the_field(recall, count, recent, user, field):
    stub, _ = recall
    with pytest.raises(grpc.RpcError) as caught:
        ask(stub, user, recent=recent, count=count)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


def test_refuses_to_start_on_a_missing_or_mismatched_artifact(artifacts, tmp_path):
    data_dir, root = artifacts
    copy = tmp_path / "artifacts"
    for path in (root / "v1").rglob("*"):
        if path.is_file():
            target = copy / "v1" / path.relative_to(root / "v1")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (copy / "v1" / "recall" / "item_cf.npz").unlink()
    with pytest.raises(ArtifactError, match="item_cf.npz"):
        open_recall(dataclasses.replace(settings_for(artifacts), artifacts=copy, bundle="v1"))
    manifest = json.loads((root / "v1" / "manifest.json").read_text())
    spec = json.loads(manifest["components"]["recall"]["feature_spec"])
    spec["fields"][0]["vocab_size"] += 1  # built for a different user table
    manifest["components"]["recall"]["feature_spec"] = json.dumps(spec)
    (copy / "v1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="feature_spec"):
        open_recall(dataclasses.replace(settings_for(artifacts), artifacts=copy, bundle="v1"))


def test_metrics_funnel_channel_mix_and_model_version(recall):
    stub, service = recall
    registry = service.metrics.registry
    names = ("mf", "two_tower", "item_cf", "profile", "social", "fresh", "popular")

    def value(name: str, **labels) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def snapshot() -> tuple[float, float, float]:  # the server is shared: compare deltas
        return (
            value("cascade_candidates_total", stage="recall", direction="out"),
            sum(value("cascade_recall_channel_kept_total", channel=n) for n in names),
            value("cascade_model_latency_seconds_count", stage="recall"),
        )

    before = snapshot()
    response = ask(stub, 1, recent=[7])
    out, kept, calls = (a - b for a, b in zip(snapshot(), before, strict=True))
    assert out == len(response.candidates.item_ids) > 0
    assert kept == out  # every merged candidate is owned by exactly one channel
    assert calls == 1
    assert value("cascade_model_info", stage="recall", model_version="v1") == 1
