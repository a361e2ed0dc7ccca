"""One way to reach Redis: a single server or a Redis Cluster, chosen by the URL.

`redis://host:port/db` (or rediss://, unix://) is one server; `redis+cluster://host:port[,host:
port...]` is a Redis Cluster reached through any of the listed nodes (the client learns the
slot map from them and follows MOVED / ASK redirections). Keys that one Lua script touches share
a hash tag (`{...}`) so they live in one slot; `slot_groups` splits a batch of such parts by slot,
which on a single server is one group (everything in one atomic script, as before clustering).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

CLUSTER_SCHEME = "redis+cluster://"
URL_SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)

Client = redis.Redis | RedisCluster
T = TypeVar("T")


def is_redis_url(url: str) -> bool:
    return url.startswith(URL_SCHEMES)


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def cluster_nodes(url: str) -> list[ClusterNode]:
    """The startup nodes of a redis+cluster:// URL (a path after the nodes is ignored: a
    cluster has one database)."""
    hosts = url[len(CLUSTER_SCHEME) :].split("/", 1)[0]
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{url!r}: expected redis+cluster://HOST:PORT[,HOST:PORT...]")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return nodes


def connect(url: str, timeout_s: float, connect_timeout_s: float | None = None) -> Client:
    """A client for `url` (one server or a cluster) with these socket timeouts."""
    connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
    if is_cluster(url):
        return RedisCluster(
            startup_nodes=cluster_nodes(url),
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
    )


def slot_groups(
    client: Client, parts: Iterable[tuple[str, T]]
) -> dict[Hashable, tuple[str, list[T]]]:
    """(key, part) pairs grouped by the slot of the key: slot -> (a key of that slot, its parts).
    A single server takes every part in one group."""
    clustered = isinstance(client, RedisCluster)
    groups: dict[Hashable, tuple[str, list[T]]] = {}
    for key, part in parts:
        slot = key_slot(key.encode()) if clustered else 0
        groups.setdefault(slot, (key, []))[1].append(part)
    return groups
