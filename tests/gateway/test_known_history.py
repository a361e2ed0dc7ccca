"""No served item is in the user's known history, whichever path produced the page: the full
cascade (every recall channel, the fresh slot), each stage's fallback, and all of them at once."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.candidates import channel_bit
from cascade.data.split import split_dataset
from cascade.topology import STAGES
from tests.gateway.conftest import HAS_PRERANK
from tests.gateway.test_server import client_for

pytestmark = pytest.mark.timeout(180)
# Which stages are stopped: none (every channel and the fresh slot), each alone, the scoring
# stages (local rerank on recall's order) and all four (popular cache + local rerank).
PATHS = [(), *[(s,) for s in STAGES if HAS_PRERANK or s != "prerank"], ("rank", "rerank"), STAGES]


def known_history(built) -> dict[int, set[int]]:
    train = split_dataset(built.dataset).train_interactions
    history: dict[int, set[int]] = {}
    for user, item in zip(train["user_id"].tolist(), train["item_id"].tolist(), strict=True):
        history.setdefault(user, set()).add(item)
    return history


@pytest.mark.parametrize("stopped", PATHS, ids=lambda s: "+".join(s) or "none")
def test_no_served_item_is_in_the_known_history(stack_factory, built, stopped):
    stack = stack_factory()
    for name in stopped:
        if name in stack.stages:
            stack.stop_stage(name)
    history = known_history(built)
    assert len(history) >= 20
    served_fresh = 0
    with client_for(stack) as client:
        played_user = next(iter(history))
        first = client.recommend(played_user, count=5).items.item_ids[0]
        assert client.feedback([(played_user, first, "play")]).accepted == 1
        history[played_user].add(first)  # an online play is known history from now on
        for user, items in history.items():
            response = client.recommend(user, count=20, debug=True)
            served = set(response.items.item_ids)
            assert len(served) == len(response.items.item_ids) > 0
            assert not served & items, (user, stopped, sorted(served & items))
            assert all(s in response.degraded_stages for s in stopped)
            fresh = channel_bit("fresh")
            served_fresh += sum(1 for m in response.items.channel_masks if m & fresh)
    if "recall" not in stopped:  # the fresh channel (and the fresh slot) were on these pages
        assert served_fresh > 0


def test_the_popular_fallback_leaves_out_the_logged_history(stack_factory, built):
    """Recall down: the popular cache minus the user's logged items, not only the recent ones."""
    stack = stack_factory()
    for name in list(stack.stages):
        stack.stop_stage(name)
    history = known_history(built)
    popular = stack.gateway.service.catalog.popular
    user = max(history, key=lambda u: len(history[u] & set(popular[:20].tolist())))
    assert history[user] & set(popular[:20].tolist())  # the user did play some top items
    with client_for(stack) as client:
        ids = np.asarray(client.recommend(user, count=20).items.item_ids)
    assert len(ids) > 0 and not set(ids.tolist()) & history[user]
