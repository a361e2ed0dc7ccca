"""The Prerank service on a real server (ephemeral 127.0.0.1 port)."""

from __future__ import annotations

import logging
import urllib.request

import grpc
import numpy as np
import pytest

from cascade.candidates import to_proto
from cascade.client import ClientSettings, field_violations, make_channel
from cascade.server import ServerSettings
from cascade.v1 import common_pb2, prerank_pb2, prerank_pb2_grpc
from services.prerank.scorer import PrerankScorer
from services.prerank.server import PrerankSettings, main, start

pytestmark = pytest.mark.timeout(60)
SETTINGS = PrerankSettings(
    server=ServerSettings(port=0, metrics_port=0, grace_s=0.5),
    default_count=5,
    max_count=20,
    max_candidates=100,
)


def _metrics(running) -> str:
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


@pytest.fixture(scope="module")
def server(distilled):
    scorer = PrerankScorer.from_bundle(distilled.bundle, distilled.world.store)
    running = start(SETTINGS, (distilled.bundle, scorer))
    yield running, scorer
    running.stop(0.5)


@pytest.fixture(scope="module")
def stub(server):
    channel = make_channel(server[0].address, ClientSettings(timeout_s=5, max_attempts=1))
    yield prerank_pb2_grpc.PrerankStub(channel)
    channel.close()


def _request(items, user=3, masks=None, scores=None, **kwargs):
    request = prerank_pb2.PrerankRequest(user=common_pb2.UserContext(user_id=user), **kwargs)
    to_proto(np.asarray(items, dtype=np.int64), scores, masks, out=request.candidates)
    return request


def test_returns_the_top_count_by_student_score_with_masks(server, stub):
    _, scorer = server
    items = np.arange(1, 31)
    masks = np.arange(30, dtype=np.uint32) * 2
    response = stub.Prerank(_request(items, masks=masks, count=12))
    ids = np.asarray(response.candidates.item_ids)
    expected, _ = scorer.score(3, items)
    np.testing.assert_array_equal(ids, items[np.argsort(-expected, kind="stable")[:12]])
    np.testing.assert_allclose(response.candidates.scores, expected[ids - 1], rtol=1e-6)
    np.testing.assert_array_equal(response.candidates.channel_masks, masks[ids - 1])
    assert response.model_version == "v1" and response.teacher_version == "v1"
    assert response.unknown_items == 0


def test_empty_list_gets_an_empty_answer(stub):
    response = stub.Prerank(_request([], count=3))
    assert len(response.candidates.item_ids) == 0 and response.model_version == "v1"


def test_count_zero_is_the_default_and_above_the_list_is_clamped(stub):
    assert len(stub.Prerank(_request(range(1, 31))).candidates.item_ids) == SETTINGS.default_count
    assert len(stub.Prerank(_request(range(1, 8), count=15)).candidates.item_ids) == 7


def test_count_above_the_maximum_is_invalid_argument_naming_count(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Prerank(_request(range(1, 31), count=21))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "count" in field_violations(error.value)


def test_malformed_candidates_name_the_field(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Prerank(
            prerank_pb2.PrerankRequest(
                user=common_pb2.UserContext(user_id=3),
                candidates=common_pb2.CandidateList(item_ids=[1, 2, 3], scores=[0.5, 0.1]),
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidates.scores" in field_violations(error.value)
    with pytest.raises(grpc.RpcError) as error:
        stub.Prerank(_request([1, 2], user=-4))
    assert "user.user_id" in field_violations(error.value)


def test_unknown_items_come_last_and_are_counted_in_the_metric(server, stub):
    response = stub.Prerank(_request([5, 999, 0, 7], count=4))
    assert list(response.candidates.item_ids[2:]) == [999, 0]
    assert response.unknown_items == 2
    text = _metrics(server[0])
    assert 'cascade_unknown_items_total{stage="prerank"} 2.0' in text
    assert 'cascade_candidates_total{direction="in",stage="prerank"}' in text
    assert "cascade_model_latency_seconds_count" in text
    assert "cascade_prerank_teacher_version_mismatch 0.0" in text


def test_a_student_from_another_teacher_sets_the_warning_gauge(distilled, server, caplog):
    _, scorer = server
    stale = PrerankScorer(
        scorer.session, scorer.store, scorer.vectors, scorer.known, scorer.version, "an-older-rank"
    )
    with caplog.at_level(logging.WARNING):
        running = start(SETTINGS, (distilled.bundle, stale))
    try:
        assert "cascade_prerank_teacher_version_mismatch 1.0" in _metrics(running)
        assert "an-older-rank" in caplog.text and "distil again" in caplog.text
    finally:
        running.stop(0.5)


def test_main_refuses_to_start_without_a_usable_bundle(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CASCADE_PRERANK_ARTIFACTS", str(tmp_path))
    assert main([]) == 2
    assert "refusing to start" in capsys.readouterr().err
