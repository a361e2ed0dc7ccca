"""Two gateways and every stage on one real redis-server: a play heard by one gateway shapes the
next answer from the other, the stages read the shared state themselves, pages shown are not
repeated, and a Feedback the store did not take is never reported as accepted."""

from __future__ import annotations

import grpc
import numpy as np

from cascade.redis_store import wait_for
from gateway.server import start
from tests.gateway.conftest import gateway_settings
from tests.gateway.test_server import client_for


def test_a_play_through_one_gateway_shapes_the_answer_of_another(stack_factory, redis_url):
    stack = stack_factory(store=redis_url)
    other = start(gateway_settings(stack_factory.built, stack.stages, store=redis_url))
    try:
        user = 2
        with client_for(stack) as first, client_for(type("S", (), {"gateway": other})) as second:
            before = list(first.recommend(user, count=5).items.item_ids)
            played = before[0]
            assert first.feedback([(user, played, "play")]).accepted == 1
            after = list(second.recommend(user, count=5).items.item_ids)
        assert played not in after
        # The gateways keep no per-user record with Redis: the stages read the shared store.
        assert other.service.online.recent(user) == [] == stack.gateway.service.online.recent(user)
        store = stack.recall_service.state.store
        assert store.history(np.array([user]))[0][0] == played
        assert wait_for(lambda: store.item_counters(np.array([played]))["play"][0] >= 1)
        # The first page was recorded as shown (off the answer's path) and is not repeated.
        stack.gateway.service.impressions.close()  # writes (and records as shown) what is queued
        # (at_ms=0: every page recorded, on whatever clock the gateway runs)
        assert set(before) <= set(store.shown(user, at_ms=0).tolist())
        assert not set(before) & set(after)
    finally:
        other.stop(0)
        other.service.close()


def test_feedback_is_unavailable_when_the_store_cannot_take_it(stack_factory, redis_process):
    stack = stack_factory(store=redis_process.url)
    redis_process.kill()
    with client_for(stack) as client:
        try:
            client.feedback([(3, 1, "play")])
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "online store did not take them; retry" in error.details()
        else:
            raise AssertionError("Feedback reported events as accepted that were not stored")
        # Recommend still answers: reads degrade to the training period's state.
        assert len(client.recommend(3, count=5).items.item_ids) == 5
