"""External ids through a real gateway: string user and item keys in, item keys out, new users
assigned on Feedback, bad keys rejected by name. The tiny world gets saved id maps ("u-N",
"song-N") as `cascade data import` writes them; the stages read the same dataset."""

from __future__ import annotations

import shutil
from dataclasses import replace

import grpc
import pytest

from cascade.client import field_violations
from cascade.ids import IdMap
from cascade.v1 import gateway_pb2
from gateway.client import CascadeClient
from gateway.server import start
from tests.gateway.conftest import gateway_settings, start_stages

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keyed_stack(built, tmp_path):
    """The stages on the tiny bundle and a gateway whose dataset carries string ids."""
    data_dir = tmp_path / "data"
    shutil.copytree(built.data_dir, data_dir)
    ids = data_dir / "ml-100k" / "ids"
    ids.mkdir()
    n_users, n_items = len(built.dataset.users["user_id"]), len(built.dataset.items["item_id"])
    IdMap(n_users, known=[f"u-{i}" for i in range(1, n_users + 1)]).save(ids / "users.parquet")
    IdMap(n_items, known=[f"song-{i}" for i in range(1, n_items + 1)]).save(ids / "items.parquet")
    stages, _ = start_stages(built)
    settings = gateway_settings(built, stages, new_user_capacity=1)
    settings = replace(settings, data_dir=data_dir)  # the gateway alone sees the saved ids
    gateway = start(settings)
    yield gateway
    gateway.stop(0)
    gateway.service.close()
    for server in stages.values():
        server.stop(0)


def test_string_keys_in_and_out(keyed_stack):
    ids = keyed_stack.service.ids
    assert ids.recommend_user(gateway_pb2.RecommendRequest(user_key="u-2")) == (2, "u-2")
    # An int64 id is an external id too: 2 is no user of this dataset, so it is anonymous.
    assert ids.recommend_user(gateway_pb2.RecommendRequest(user_id=2)) == (0, "2")
    with CascadeClient(keyed_stack.address, timeout_s=5.0) as client:
        by_key = client.recommend("u-2", count=5)
        assert list(by_key.item_keys) == [f"song-{i}" for i in by_key.items.item_ids]
        played = by_key.item_keys[0]
        reply = client.feedback([("u-2", played, "play")])
        assert reply.accepted == 1 and not reply.rejected
        after = client.recommend("u-2", count=5)
    assert played not in after.item_keys
    assert keyed_stack.service.online.recent(2) == [int(played.removeprefix("song-"))]


def test_a_new_user_key_gets_an_id_up_to_the_capacity(keyed_stack):
    with CascadeClient(keyed_stack.address, timeout_s=5.0) as client:
        anonymous = client.recommend("newbie", count=5)  # unknown: answered as anonymous
        assert len(anonymous.item_keys) == 5
        assert client.feedback([("newbie", "song-7", "play")]).accepted == 1
        with pytest.raises(grpc.RpcError) as error:  # the one free id is taken
            client.feedback([("second", "song-8", "play")])
        after = client.recommend("newbie", count=5)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "events.user_id" in field_violations(error.value)
    assert keyed_stack.service.ids.users.lookup(["newbie", "second"]).tolist() == [31, 0]
    assert keyed_stack.service.online.recent(31) == [7]
    assert "song-7" not in after.item_keys


def test_bad_keys_are_rejected_by_field(keyed_stack):
    with CascadeClient(keyed_stack.address, timeout_s=5.0) as client:
        reply = client.feedback([("u-1", "song-404", "play"), ("u-1", "song-3", "like")])
        assert reply.accepted == 1
        assert [(r.index, r.reason) for r in reply.rejected] == [
            (0, "item_key: 'song-404' is not in the catalog")
        ]
        with pytest.raises(grpc.RpcError) as error:
            both = gateway_pb2.RecommendRequest(user_id=3, user_key="u-3")
            client._stub.Recommend(both, timeout=5.0)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == {"user_key": "set user_key or user_id, not both"}
