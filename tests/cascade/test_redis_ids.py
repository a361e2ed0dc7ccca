"""The Redis id map against a real redis-server: IdMap's rules, shared by every gateway replica."""

from __future__ import annotations

import threading

import pytest

from cascade.ids import IdMap, IdSpaceFull
from cascade.redis_client import connect
from cascade.redis_ids import RedisIdMap


@pytest.fixture(params=["redis", "redis-cluster"])
def client(request):
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    connection = connect(url, 2.0)
    yield connection
    connection.close()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def make_map(request):
    """make_map(capacity, identity, known) for IdMap and for RedisIdMap on a server and on a
    cluster (same contract)."""
    clients = []

    def make(capacity, identity=0, known=()):
        if request.param == "memory":
            return IdMap(capacity, identity, known)
        fixture = "redis_url" if request.param == "redis" else "redis_cluster_url"
        clients.append(connect(request.getfixturevalue(fixture), 2.0))
        return RedisIdMap(clients[-1], "test", capacity, identity, known)

    yield make
    for client in clients:
        client.close()


def test_identity_ids_and_unknown_ids(make_map):
    ids = make_map(10, identity=5)
    assert ids.lookup([1, "5", 3]).tolist() == [1, 5, 3]
    assert ids.lookup([6, "05", 0, -1, "x"]).tolist() == [0, 0, 0, 0, 0]
    assert ids.external([2, 5]) == ["2", "5"] and len(ids) == 5


def test_new_ids_get_the_next_dense_id_in_order_of_first_sight(make_map):
    ids = make_map(10, identity=3, known=["alice"])
    assert ids.lookup(["alice"]).tolist() == [4]
    assert ids.assign(["bob", 99999999, "bob", 2]).tolist() == [5, 6, 5, 2]
    assert ids.external([5, 6, 4]) == ["bob", "99999999", "alice"]
    assert ids.lookup(["99999999"]).tolist() == [6]
    with pytest.raises(ValueError, match="not in the map"):
        ids.external([7])


def test_a_full_map_refuses_the_whole_batch(make_map):
    ids = make_map(4, identity=2)
    ids.assign(["a"])
    with pytest.raises(IdSpaceFull, match="2 new ids do not fit: 3 of 4"):
        ids.assign(["b", "c"])
    assert len(ids) == 3 and ids.lookup(["b"]).tolist() == [0]
    assert ids.assign(["b", "a"]).tolist() == [4, 3]


def test_two_gateways_give_a_new_id_the_same_dense_id(client):
    gateways = [RedisIdMap(client, "shared", 10_000, identity=943) for _ in range(2)]
    answers: list[list[int]] = [[], []]

    def sign_up(which: int) -> None:
        for n in range(300):  # both replicas see the same 300 new users, interleaved
            answers[which].append(int(gateways[which].assign([f"user-{n}"])[0]))

    threads = [threading.Thread(target=sign_up, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers[0] == answers[1]
    assert sorted(answers[0]) == list(range(944, 1244))
    assert len(gateways[0]) == len(gateways[1]) == 1243


def test_a_restarted_gateway_finds_the_ids_again(client):
    RedisIdMap(client, "restart", 100, identity=10).assign(["x", "y"])
    again = RedisIdMap(client, "restart", 100, identity=10)
    assert again.lookup(["y", "x", "z"]).tolist() == [12, 11, 0]
