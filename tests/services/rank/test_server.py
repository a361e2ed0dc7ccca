"""The Rank service on a real server (ephemeral 127.0.0.1 port)."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cascade.candidates import to_proto
from cascade.client import ClientSettings, field_violations, make_channel
from cascade.server import ServerSettings
from cascade.v1 import common_pb2, rank_pb2, rank_pb2_grpc
from services.rank.scorer import RankScorer
from services.rank.server import RankSettings, main, start

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(trained):
    scorer = RankScorer.from_bundle(trained.bundle, trained.store)
    settings = RankSettings(
        server=ServerSettings(port=0, metrics_port=0, grace_s=0.5), max_candidates=50
    )
    running = start(settings, scorer)
    yield running, scorer
    running.stop(0.5)


@pytest.fixture(scope="module")
def stub(server):
    channel = make_channel(server[0].address, ClientSettings(timeout_s=5, max_attempts=1))
    yield rank_pb2_grpc.RankStub(channel)
    channel.close()


def _request(items, user=3, masks=None, positions=None, **kwargs):
    request = rank_pb2.RankRequest(user=common_pb2.UserContext(user_id=user), **kwargs)
    items = np.asarray(items, dtype=np.int64)
    to_proto(items, None, masks, positions, out=request.candidates)
    return request


def test_returns_candidates_sorted_by_fused_score_with_task_scores(server, stub):
    _, scorer = server
    items = np.arange(1, 31)
    masks = np.arange(1, 31, dtype=np.uint32) * 2
    positions = np.arange(30, 0, -1, dtype=np.uint32)
    response = stub.Rank(_request(items, masks=masks, positions=positions, return_task_scores=True))
    ids, scores = np.asarray(response.candidates.item_ids), np.asarray(response.candidates.scores)
    expected, probabilities = scorer.score(3, items)
    assert sorted(ids) == list(items)
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, expected[ids - 1], rtol=1e-6)
    np.testing.assert_array_equal(response.candidates.channel_masks, masks[ids - 1])
    np.testing.assert_array_equal(response.candidates.channel_positions, positions[ids - 1])
    assert [t.task for t in response.task_scores] == ["play", "like"]
    np.testing.assert_allclose(
        response.task_scores[1].probabilities, probabilities[ids - 1, 1], rtol=1e-6
    )
    assert response.model_version == "v1" and response.unknown_items == 0


def test_count_keeps_the_best(stub):
    everything = stub.Rank(_request(range(1, 31)))
    top = stub.Rank(_request(range(1, 31), count=5))
    assert list(top.candidates.item_ids) == list(everything.candidates.item_ids[:5])
    assert not top.task_scores


def test_empty_list_gets_an_empty_answer(stub):
    response = stub.Rank(_request([]))
    assert len(response.candidates.item_ids) == 0 and response.model_version == "v1"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The /metrics page as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_unknown_items_are_dropped_and_counted(server, stub):
    port = server[0].metrics_port
    keys = {
        "unknown": ("cascade_unknown_items_total", (("stage", "rank"),)),
        "calls": ("cascade_model_latency_seconds_count", (("stage", "rank"),)),
        "in": ("cascade_candidates_total", (("direction", "in"), ("stage", "rank"))),
    }
    before = scrape(port)
    response = stub.Rank(_request([5, 999, 0, 7, -3]))
    after = scrape(port)
    assert sorted(response.candidates.item_ids) == [5, 7]
    assert response.unknown_items == 3
    delta = {name: after[key] - before.get(key, 0.0) for name, key in keys.items()}
    assert delta == {"unknown": 3, "calls": 1, "in": 5}  # the server is shared: deltas


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_request(range(1, 52)), "candidates"),
        (_request([1, 2], user=-1), "user.user_id"),
        (_request([1, 2], masks=[2, 0], positions=[1, 4]), "candidates.channel_positions"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as error:
        stub.Rank(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error.value)


def test_mismatched_scores_length_names_the_field(stub):
    request = _request([1, 2, 3])
    request.candidates.scores.extend([0.5])
    with pytest.raises(grpc.RpcError) as error:
        stub.Rank(request)
    assert "candidates.scores" in field_violations(error.value)


def test_server_refuses_to_start_on_a_bundle_of_another_spec(
    trained, monkeypatch, capsys, tmp_path
):
    """Data whose vocabularies differ from the bundle's: main exits 2 naming the mismatch."""
    from cascade.data.schema import save
    from tests.conftest import make_tiny_dataset

    save(make_tiny_dataset(seed=3, n_users=12, n_items=45, n_events=400), tmp_path / "ml-100k")
    monkeypatch.setenv("CASCADE_RANK_ARTIFACTS", str(trained.root))
    monkeypatch.setenv("CASCADE_RANK_BUNDLE", "v1")
    monkeypatch.setenv("CASCADE_RANK_DATA_DIR", str(tmp_path))
    assert main([]) == 2
    assert "refusing to serve" in capsys.readouterr().err


class _NoTimeLeft:
    """A servicer context whose deadline is almost spent; abort raises like gRPC's."""

    code = None

    def time_remaining(self):
        return 0.0005

    def abort(self, code, details):
        self.code = code
        raise grpc.RpcError(details)


def test_no_scoring_when_the_deadline_is_nearly_spent(trained):
    from prometheus_client import CollectorRegistry

    from cascade.telemetry import ModelMetrics
    from services.rank.server import STAGE, RankService

    class CountingScorer(RankScorer):
        calls = 0

        def score(self, *args, **kwargs):
            CountingScorer.calls += 1
            return super().score(*args, **kwargs)

    scorer = CountingScorer.from_bundle(trained.bundle, trained.store)
    service = RankService(scorer, 50, ModelMetrics(STAGE, CollectorRegistry()))
    context = _NoTimeLeft()
    with pytest.raises(grpc.RpcError):
        service.Rank(_request([1, 2, 3]), context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED and CountingScorer.calls == 0
