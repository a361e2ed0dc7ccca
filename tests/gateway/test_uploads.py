"""The living catalogue through a real stack: an upload accepted by the gateway is logged, is
recallable by the fresh, creator and follow channels from the next request, and is scored by
pre-rank and rank from its metadata; follows and unfollows reach recall; bad uploads and changes
are INVALID_ARGUMENT naming the field; a restarted gateway keeps the uploaded ids."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from cascade.candidates import channel_bit
from cascade.client import field_violations
from cascade.traffic_pool import PoolSettings
from cascade.v1 import (
    catalog_pb2,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    prerank_pb2,
    prerank_pb2_grpc,
    rank_pb2,
    rank_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
)
from gateway.client import CascadeClient
from gateway.server import start

pytestmark = pytest.mark.timeout(120)
# Well after the tiny world's log (its times are near the epoch): its own items are older than
# the test recall's fresh window (1e9 s) there, so the fresh pool holds only what is uploaded.
UPLOAD_MS = 1_200_000_000_000
NEW = {"item_key": "new-song", "creator_id": 2, "categories": [1, 3], "upload_time_ms": UPLOAD_MS}


def recall(stack, user_id: int, time_ms: int) -> recall_pb2.RecallResponse:
    with grpc.insecure_channel(stack.stages["recall"].address) as channel:
        user = common_pb2.UserContext(user_id=user_id, request_time_ms=time_ms)
        return recall_pb2_grpc.RecallStub(channel).Recall(
            recall_pb2.RecallRequest(user=user, count=40), timeout=5
        )


def found_by(answer: recall_pb2.RecallResponse, item_id: int, channel: str) -> bool:
    ids = list(answer.candidates.item_ids)
    if item_id not in ids:
        return False
    return bool(answer.candidates.channel_masks[ids.index(item_id)] & channel_bit(channel))


def test_an_upload_is_recalled_fresh_and_scored_by_prerank_and_rank(stack_factory):
    stack = stack_factory()
    n_items = len(stack_factory.built.dataset.items["item_id"])  # ids 1..n_items
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        before = recall(stack, 5, UPLOAD_MS + 1000)
        answer = client.add_items([NEW])
        assert list(answer.item_ids) == [n_items + 1] and answer.added == 1
        again = client.add_items([NEW])  # a retry keeps the id and adds nothing
        assert list(again.item_ids) == [n_items + 1] and again.added == 0
        new_id = n_items + 1
        assert new_id not in before.candidates.item_ids
        after = recall(stack, 5, UPLOAD_MS + 1000)
        assert found_by(after, new_id, "fresh")
        fresh = next(r for r in after.channels if r.channel == common_pb2.CHANNEL_FRESH)
        assert fresh.returned == 1  # the only upload in the window
        assert not found_by(recall(stack, 5, UPLOAD_MS - 1000), new_id, "fresh")  # not before
        # Feedback may name it by its key at once.
        event = gateway_pb2.Event(user_id=5, item_key="new-song", type=gateway_pb2.EVENT_TYPE_PLAY)
        assert client.feedback([event]).accepted == 1
    # Pre-rank and rank score it from its creator and categories (id out of their vocabulary).
    candidates = common_pb2.CandidateList(item_ids=[new_id, 1, 2], scores=[0, 0, 0])
    user = common_pb2.UserContext(user_id=5)
    with grpc.insecure_channel(stack.stages["rank"].address) as channel:
        ranked = rank_pb2_grpc.RankStub(channel).Rank(
            rank_pb2.RankRequest(user=user, candidates=candidates), timeout=5
        )
    assert ranked.unknown_items == 0 and new_id in ranked.candidates.item_ids
    assert np.isfinite(ranked.candidates.scores).all()
    if "prerank" in stack.stages:
        with grpc.insecure_channel(stack.stages["prerank"].address) as channel:
            preranked = prerank_pb2_grpc.PrerankStub(channel).Prerank(
                prerank_pb2.PrerankRequest(user=user, candidates=candidates, count=3), timeout=5
            )
        assert preranked.unknown_items == 0
        assert np.isfinite(preranked.candidates.scores).all()
    # The upload is on the log, with the key, creator and time it was sent with.
    (logged,) = stack.gateway.service.log.read_records("uploads").to_pylist()
    assert logged["item_id"] == new_id and logged["item_key"] == "new-song"
    assert (logged["creator_id"], logged["categories"], logged["upload_ms"]) == (
        2,
        [1, 3],
        UPLOAD_MS,
    )


def test_a_restarted_gateway_keeps_the_uploaded_ids(stack_factory):
    stack = stack_factory()
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        (first,) = client.add_items([NEW]).item_ids
        (second,) = client.add_items([{**NEW, "item_key": "second"}]).item_ids
    stack.gateway.stop(0)
    stack.gateway.service.close()
    restarted = start(stack.settings)
    try:
        with CascadeClient(restarted.address, timeout_s=5.0) as client:
            assert list(client.add_items([NEW, {**NEW, "item_key": "second"}]).item_ids) == [
                first,
                second,
            ]
            event = gateway_pb2.Event(
                user_id=5, item_key="second", type=gateway_pb2.EVENT_TYPE_PLAY
            )
            assert client.feedback([event]).accepted == 1
    finally:
        restarted.stop(0)
        restarted.service.close()


def test_follows_and_unfollows_reach_the_follow_channel(stack_factory):
    stack = stack_factory()
    dataset = stack_factory.built.dataset
    creator = 3
    account = int(dataset.creators["user_id"][dataset.creators["creator_id"] == creator][0])
    follower = next(u for u in range(1, 30) if u not in (account, 3, 4))  # follows no one yet
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        (new_id,) = client.add_items([{**NEW, "creator_id": creator}]).item_ids
        assert not found_by(recall(stack, follower, UPLOAD_MS + 1000), new_id, "social")
        assert client.change_follows([(follower, account, False)]).applied == 1
        assert found_by(recall(stack, follower, UPLOAD_MS + 1000), new_id, "social")
        client.change_follows([(follower, account, True)])
        assert not found_by(recall(stack, follower, UPLOAD_MS + 1000), new_id, "social")
    logged = stack.gateway.service.log.read_records("follows").to_pylist()
    assert [(r["follower_id"], r["followee_id"], r["unfollow"]) for r in logged] == [
        (follower, account, False),
        (follower, account, True),
    ]


def test_a_followers_recall_and_page_hold_the_followed_creators_upload_right_after_it(
    stack_factory,
):
    """Social recall within a second of the upload: the bundle's follow graph (user 3 follows
    creator 1's account) meets the upload AddItems forwarded to recall, and the traffic pool
    gives the follower's page a slot for it, followers first."""
    # The services' default pool; no creator cap (the tiny world's three creators fill pages).
    stack = stack_factory(clock="caller", pool=PoolSettings(), max_per_creator=0)
    dataset = stack_factory.built.dataset
    follows, creators = dataset.follows, dataset.creators
    follower, creator = 3, 1
    followed = follows["followee_id"][follows["follower_id"] == follower]
    account = creators["user_id"][creators["creator_id"] == creator]
    assert followed.tolist() == account.tolist()  # from the bundle, not an online follow
    at = UPLOAD_MS + 1000  # a second after the upload
    with CascadeClient(stack.gateway.address, timeout_s=5.0) as client:
        (new_id,) = client.add_items([{**NEW, "creator_id": creator}]).item_ids
        assert found_by(recall(stack, follower, at), new_id, "social")
        page = client.recommend(follower, count=5, request_time_ms=at)
    ids = list(page.items.item_ids)
    assert new_id in ids
    assert page.items.channel_masks[ids.index(new_id)] & channel_bit("social")
    # Someone who does not follow the creator gets it by the fresh channel, not the social one.
    assert not found_by(recall(stack, 5, at), new_id, "social")


BAD_ITEMS = [
    ({"creator_id": 2}, "items[0].item_key"),
    ({**NEW, "creator_id": 0}, "items[0].creator_id"),
    ({**NEW, "categories": [1, 9]}, "items[0].categories"),
    ({**NEW, "categories": [2, 2]}, "items[0].categories"),
    ({**NEW, "upload_time_ms": -5}, "items[0].upload_time_ms"),
    ({**NEW, "upload_time_ms": 2**62}, "items[0].upload_time_ms"),
    # The tiny world's items carry no content vector: any is the wrong length.
    ({**NEW, "content": [0.5, 1.0]}, "items[0].content"),
]


@pytest.mark.parametrize("item, field", BAD_ITEMS)
def test_a_bad_upload_is_invalid_argument_naming_the_field(shared_stack, item, field):
    with grpc.insecure_channel(shared_stack.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        good = catalog_pb2.NewItem(item_key="fine", creator_id=1)
        request = catalog_pb2.AddItemsRequest(items=[catalog_pb2.NewItem(**item)])
        with pytest.raises(grpc.RpcError) as error:
            stub.AddItems(request, timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(field_violations(error.value)) == [field]
        # The whole batch is refused: a good item before it is not added either.
        request = catalog_pb2.AddItemsRequest(items=[good, catalog_pb2.NewItem(**item)])
        with pytest.raises(grpc.RpcError) as error:
            stub.AddItems(request, timeout=5)
        assert list(field_violations(error.value)) == [field.replace("[0]", "[1]")]
    assert shared_stack.gateway.service.log.read_records("uploads").num_rows == 0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"follower_id": 0, "followee_id": 2}, "changes[0].follower_id"),
        ({"follower_id": 2, "followee_id": -1}, "changes[0].followee_id"),
        ({"follower_id": 2, "followee_id": 2}, "changes[0].followee_id"),
        ({"follower_id": 2, "followee_id": 3, "timestamp_ms": -1}, "changes[0].timestamp_ms"),
    ],
)
def test_a_bad_follow_change_is_invalid_argument_naming_the_field(shared_stack, change, field):
    with grpc.insecure_channel(shared_stack.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = catalog_pb2.ChangeFollowsRequest(changes=[catalog_pb2.FollowChange(**change)])
        with pytest.raises(grpc.RpcError) as error:
            stub.ChangeFollows(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error.value)) == [field]
