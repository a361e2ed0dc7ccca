"""A real redis-server for tests: Debian's binary on an ephemeral 127.0.0.1 port in a temp dir;
and a real 3-master Redis Cluster of those processes, emptied before each test that asks for it.

AOF is on with appendfsync always, as the docker-compose and K8s Redis run it, so a test that
kills and restarts the server sees what production would. Skips (with the reason) only when the
binary is missing: `make test` installs it (`make system-packages`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.redis_client import connect
from cascade.redis_server import RedisClusterProcesses, RedisProcess


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make system-packages: apt redis-server)")
    return binary


@pytest.fixture
def redis_process(redis_binary: str, tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh server per test (its own port, dir and AOF); stopped after."""
    server = RedisProcess.start(tmp_path / "redis", binary=redis_binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> str:
    return redis_process.url


@pytest.fixture(scope="session")
def redis_cluster(redis_binary: str, tmp_path_factory) -> Iterator[RedisClusterProcesses]:
    """Three masters (slots split evenly, no replicas), started once for the session."""
    cluster = RedisClusterProcesses.start(tmp_path_factory.mktemp("cluster"), binary=redis_binary)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    """The cluster's redis+cluster:// URL, every master emptied first."""
    client = connect(redis_cluster.url, 2.0)
    try:
        for node in client.get_primaries():
            client.flushall(target_nodes=node)
    finally:
        client.close()
    return redis_cluster.url
