"""Integration: a real Rerank server on an ephemeral 127.0.0.1 port, over a tiny bundle."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cascade.candidates import to_proto
from cascade.client import field_violations
from cascade.data.schema import save
from cascade.server import ServerSettings, serve
from cascade.telemetry import new_registry
from cascade.v1 import rerank_pb2, rerank_pb2_grpc
from services.rerank.server import SERVER, STAGE, RerankSettings, load_reranker, new_service
from services.rerank.train import build
from tests.conftest import make_tiny_dataset

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    save(make_tiny_dataset(n_items=30, n_events=200), root / "data" / "ml-100k")
    build("ml-100k", root / "data", root / "artifacts", "v1", dim=4, do_publish=True)
    settings = RerankSettings(
        data_dir=root / "data", artifacts=root / "artifacts", max_count=10, default_count=5
    )
    registry = new_registry(process_metrics=False)
    service = new_service(settings, load_reranker(settings), registry)
    running = serve(STAGE, SERVER.add_servicers(service), ServerSettings(), registry)
    channel = grpc.insecure_channel(running.address)
    yield rerank_pb2_grpc.RerankStub(channel), registry
    channel.close()
    running.stop(0)


def request(ids, **fields) -> rerank_pb2.RerankRequest:
    message = rerank_pb2.RerankRequest(**fields)
    to_proto(np.asarray(ids), np.linspace(1, 0, len(ids)), out=message.candidates)
    return message


def test_page_with_reasons_and_metrics(stub):
    rerank, registry = stub
    rerank_in = {"stage": STAGE, "direction": "in"}
    latency = {"stage": STAGE}

    def value(name: str, labels: dict) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    # Deltas: the server is shared by this module's tests.
    before = {
        name: value(name, labels)
        for name, labels in (
            ("cascade_candidates_total", rerank_in),
            ("cascade_unknown_items_total", latency),
            ("cascade_model_latency_seconds_count", latency),
        )
    }
    response = rerank.Rerank(request(list(range(1, 21)), count=5, debug=True), timeout=5)
    assert len(response.candidates.item_ids) == 5
    assert len(set(response.candidates.item_ids)) == 5
    assert len(response.reasons) == 5 and response.reasons[0].startswith(("relevance", "fresh"))
    assert value("cascade_candidates_total", rerank_in) == before["cascade_candidates_total"] + 20
    # Items 1..20 are all in the 30-item catalog: none unknown.
    unknown = value("cascade_unknown_items_total", latency)
    assert unknown == before["cascade_unknown_items_total"]
    calls = value("cascade_model_latency_seconds_count", latency)
    assert calls == before["cascade_model_latency_seconds_count"] + 1
    version = {"stage": STAGE, "model_version": "v1"}
    assert registry.get_sample_value("cascade_model_info", version) == 1


def test_k_larger_than_the_list_returns_the_whole_list_reordered(stub):
    rerank, _ = stub
    for method in (rerank_pb2.DIVERSITY_METHOD_DPP, rerank_pb2.DIVERSITY_METHOD_MMR):
        response = rerank.Rerank(
            request([3, 4, 5], count=9, method=method, trade_off=0.3), timeout=5
        )
        assert sorted(response.candidates.item_ids) == [3, 4, 5]


def test_empty_list_gives_an_empty_page(stub):
    rerank, _ = stub
    response = rerank.Rerank(rerank_pb2.RerankRequest(count=3), timeout=5)
    assert list(response.candidates.item_ids) == [] and response.filtered == 0


def test_recent_items_are_filtered(stub):
    rerank, _ = stub
    message = request([1, 2, 3], count=3)
    message.user.recent_item_ids.extend([2])
    response = rerank.Rerank(message, timeout=5)
    assert 2 not in response.candidates.item_ids and response.filtered >= 1


@pytest.mark.parametrize(
    "message, field",
    [
        (request([1, 2], count=11), "count"),
        (request([1, 2], count=2, trade_off=1.5), "trade_off"),
        (request([0, 2], count=2), "candidates.item_ids"),
        (
            rerank_pb2.RerankRequest(candidates={"item_ids": [1, 2], "scores": [1.0]}),
            "candidates.scores",
        ),
        (
            rerank_pb2.RerankRequest(candidates={"item_ids": [1, 2], "channel_masks": [1]}),
            "candidates.channel_masks",
        ),
        (
            rerank_pb2.RerankRequest(candidates={"item_ids": [1], "scores": [float("nan")]}),
            "candidates.scores",
        ),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(stub, message, field):
    rerank, _ = stub
    with pytest.raises(grpc.RpcError) as error:
        rerank.Rerank(message, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error.value)


def test_spec_mismatch_is_refused(tmp_path):
    save(make_tiny_dataset(n_items=30), tmp_path / "data" / "ml-100k")
    build("ml-100k", tmp_path / "data", tmp_path / "artifacts", "v1", dim=2, do_publish=True)
    save(make_tiny_dataset(n_items=31), tmp_path / "data" / "ml-100k")
    settings = RerankSettings(data_dir=tmp_path / "data", artifacts=tmp_path / "artifacts")
    with pytest.raises(ValueError, match="item_id"):
        load_reranker(settings)
