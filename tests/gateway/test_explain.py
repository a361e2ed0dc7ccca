"""The explain option of Recommend (the console's): refused without a token, every stage's list
when allowed, the same page as Recommend, and no side effect (no impression, no arm count)."""

from __future__ import annotations

import time

import grpc
import pytest

from cascade.traffic_pool import PoolSettings
from cascade.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.client import CascadeClient
from gateway.request_time import request_time_metadata

pytestmark = pytest.mark.timeout(120)
TOKEN = "explain-secret"
# Well after the tiny world's log: only what is uploaded here is young for the pool.
UPLOAD_MS = 1_200_000_000_000
NEW = {"item_key": "new-song", "creator_id": 2, "categories": [1, 3], "upload_time_ms": UPLOAD_MS}


def recommend(
    stack, explain: bool, token: str = "", user_id: int = 2, count: int = 5, at_ms: int = 0
):
    request = gateway_pb2.RecommendRequest(user_id=user_id, count=count, explain=explain)
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
    if at_ms:  # a gateway with clock "caller" serves at this time
        metadata += request_time_metadata(at_ms)
    with grpc.insecure_channel(stack.gateway.address) as channel:
        return gateway_pb2_grpc.GatewayStub(channel).Recommend(
            request, timeout=5, metadata=metadata or None
        )


def impressions(stack) -> float:
    stack.gateway.service.impressions.flush()
    return (
        stack.gateway.registry.get_sample_value(
            "cascade_gateway_impressions_total", {"outcome": "logged"}
        )
        or 0.0
    )


def test_explain_is_refused_without_the_token_and_without_a_token_set(stack_factory):
    guarded = stack_factory(explain_token=TOKEN)
    for token, code in (("", "UNAUTHENTICATED"), ("wrong", "UNAUTHENTICATED")):
        with pytest.raises(grpc.RpcError) as refused:
            recommend(guarded, explain=True, token=token)
        assert refused.value.code().name == code
        assert "explain token" in refused.value.details()
    assert recommend(guarded, explain=False).items.item_ids  # plain Recommend stays open
    unset = stack_factory()  # neither an API token nor an explain token: explain is off
    with pytest.raises(grpc.RpcError) as refused:
        recommend(unset, explain=True, token=TOKEN)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "CASCADE_GATEWAY_EXPLAIN_TOKEN" in refused.value.details()


def test_with_an_api_token_explain_wants_that_token(stack_factory):
    stack = stack_factory(api_token="api-secret")
    with pytest.raises(grpc.RpcError) as refused:
        recommend(stack, explain=True)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert recommend(stack, explain=True, token="api-secret").explanation.stages


def test_explain_serves_recommends_page_with_every_stage_and_leaves_no_trace(stack_factory):
    """Rerank remembers the pages it answered (the embedded store's already-shown filter): had
    an explained call been remembered, the Recommend after it would serve another page. All at
    one request time: the page depends on it (recall's fresh channel draws by it)."""
    stack = stack_factory(explain_token=TOKEN, clock="caller")
    at = int(time.time() * 1000)
    logged = impressions(stack)
    answers = stack.gateway.registry.get_sample_value(
        "cascade_gateway_arm_answers_total", {"arm": "none"}
    )
    explained = [recommend(stack, explain=True, token=TOKEN, at_ms=at) for _ in range(3)]
    served = recommend(stack, explain=False, at_ms=at)
    for response in explained:
        assert list(response.items.item_ids) == list(served.items.item_ids)
    assert impressions(stack) == logged + 1  # `served`'s only: explaining logs none
    assert (
        stack.gateway.registry.get_sample_value(
            "cascade_gateway_arm_answers_total", {"arm": "none"}
        )
        == answers + 1
    )
    again = recommend(stack, explain=True, token=TOKEN, at_ms=at)  # shown: the page moves on
    assert list(again.items.item_ids) != list(served.items.item_ids)
    explanation = explained[0].explanation
    lists = {s.stage: s.candidates for s in explanation.stages}
    assert "recall" in lists and "rank" in lists and "rerank" in lists
    assert len(lists["recall"].item_ids) >= len(lists["rank"].item_ids) >= 5
    assert list(lists["rerank"].item_ids)[:5] == list(served.items.item_ids)
    assert len(explanation.rerank_reasons) == len(lists["rerank"].item_ids)
    assert explanation.user_id == 2 and list(explanation.consumed_item_ids)
    assert not served.HasField("explanation")  # a plain answer carries none


def test_an_explained_pool_fill_counts_in_no_pool_metric_and_changes_no_pool_state(stack_factory):
    """With the pool on and a young upload in recall, an explained Recommend fills its slot as
    Recommend would, but the pool's slot and empty counters, its clock (the metrics' now) and
    the users it gave uploads to stay as they were; the served page after it moves them."""
    pool = PoolSettings(target=6, gain=1e6)  # a gain this high: a young upload always wins
    stack = stack_factory(explain_token=TOKEN, clock="caller", pool=pool)
    at = UPLOAD_MS + 1000
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        (upload,) = client.add_items([NEW]).item_ids
    sample = stack.gateway.registry.get_sample_value
    names = ("cascade_gateway_pool_slots_total", "cascade_gateway_pool_empty_total")
    service = stack.gateway.service

    def pool_state() -> tuple:
        counts = tuple(sample(name, {"arm": "none"}) for name in names)
        clock = sample("cascade_gateway_pool_clock_seconds")
        return counts, clock, service.cascade.pool.given.recent(2, at).tolist()

    before = pool_state()
    assert before == ((0.0, 0.0), 0.0, [])
    explained = recommend(stack, explain=True, token=TOKEN, at_ms=at)
    assert upload in [explained.items.item_ids[p] for p in explained.explored_positions]
    assert pool_state() == before
    served = recommend(stack, explain=False, at_ms=at)
    assert list(served.items.item_ids) == list(explained.items.item_ids)
    assert pool_state() == ((1.0, 0.0), at // 1000, [upload])
