"""A local redis-server process: the shared online store of `cascade up --store redis`, the
benchmarks and the tests.

Debian's `redis-server` binary (installed by `make system-packages`), on a loopback port,
with its data directory and AOF persistence (appendfsync always: a write Redis acknowledged is on
disk) so that a kill -9 of the server loses nothing it answered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from cascade.server import free_port


class RedisNotInstalled(RuntimeError):
    """No redis-server binary on PATH."""


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotInstalled(
            "redis-server is not installed: `make system-packages` (Debian's redis-server)"
        )
    return binary


@dataclass
class RedisProcess:
    """One redis-server child process; `url` is what the `store` setting takes."""

    directory: Path
    port: int
    pid: int
    binary: str
    _process: subprocess.Popen | None = None
    _extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        directory: Path,
        port: int = 0,
        binary: str | None = None,
        timeout_s: float = 20.0,
        extra: tuple[str, ...] = (),
    ) -> RedisProcess:
        """Starts the server (port 0: a free one; `extra`: more redis-server options) and waits
        until it answers PING."""
        binary = binary or redis_binary()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        args = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str((directory / "redis.log").resolve()),
            *extra,
        ]
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = cls(directory, port, process.pid, binary, process, extra)
        server.wait_ready(timeout_s)
        return server

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited at start:\n{self.log_tail()}")
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not answering after {timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.directory / "redis.log").read_text().splitlines()[-lines:])
        return "(no log)"

    def kill(self) -> None:
        """kill -9: what a crash looks like (the AOF holds every acknowledged write)."""
        self._signal(signal.SIGKILL)
        self._wait(10.0)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), then SIGKILL after the grace."""
        self._signal(signal.SIGTERM)
        if not self._wait(grace_s):
            self.kill()

    def restart(self, timeout_s: float = 20.0) -> None:
        """Starts the server again on the same port and directory (after kill or stop)."""
        again = RedisProcess.start(self.directory, self.port, self.binary, timeout_s, self._extra)
        self.pid, self._process = again.pid, again._process

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _wait(self, timeout_s: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not Path(f"/proc/{self.pid}").exists():
                return True
            time.sleep(0.05)
        return False


@dataclass
class RedisClusterProcesses:
    """A Redis Cluster of `masters` redis-server processes on loopback (no replicas), the 16384
    slots split evenly; `url` is the redis+cluster:// URL the `store` setting takes."""

    masters: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{m.port}" for m in self.masters)

    @classmethod
    def start(
        cls, directory: Path, masters: int = 3, binary: str | None = None, timeout_s: float = 20.0
    ) -> RedisClusterProcesses:
        """Starts the servers in cluster mode, gives each its slot range, joins them (CLUSTER
        ADDSLOTSRANGE, CLUSTER MEET: no redis-cli needed) and waits until every node says ok."""
        directory = Path(directory)
        started: list[RedisProcess] = []
        bus_ports = []
        try:
            for i in range(masters):
                # The bus port is port + 10000 unless set: an ephemeral port may be too high.
                bus_ports.append(free_port())
                options: tuple[str, ...] = ("--cluster-enabled", "yes")
                options += ("--cluster-config-file", "nodes.conf")
                options += ("--cluster-port", str(bus_ports[-1]), "--cluster-node-timeout", "2000")
                started.append(
                    RedisProcess.start(directory / f"node{i}", 0, binary, timeout_s, options)
                )
            cluster = cls(started)
            cluster._join(bus_ports, timeout_s)
            return cluster
        except BaseException:
            for server in started:
                server.stop()
            raise

    def _join(self, bus_ports: list[int], timeout_s: float) -> None:
        clients = [redis.Redis(host="127.0.0.1", port=m.port) for m in self.masters]
        try:
            bounds = [round(i * 16384 / len(clients)) for i in range(len(clients) + 1)]
            for client, start, end in zip(clients, bounds, bounds[1:], strict=False):
                client.execute_command("CLUSTER ADDSLOTSRANGE", start, end - 1)
            for master, bus_port in zip(self.masters[1:], bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", master.port, bus_port)
            deadline = time.monotonic() + timeout_s
            while not all(_cluster_ok(c, len(clients)) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster did not form in {timeout_s} s")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for master in self.masters:
            master.stop()


def _cluster_ok(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER INFO")  # parsed by redis-py: field -> value
    return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == masters
