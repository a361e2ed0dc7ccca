"""A real redis-server on an ephemeral 127.0.0.1 port for the tests of the Redis backends.

`RedisServer` starts Debian's redis-server (`make test` installs it) with its data in a temporary
folder and AOF on (`appendfsync always`), so a test can kill -9 it and restart it on the same
port and files. The `redis_url` fixture skips, with the reason, when the binary is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.stack import free_port

BINARY = shutil.which("redis-server")
SKIP_REASON = "redis-server is not installed (`make redis-server-installed` installs it)"


class RedisServer:
    """One redis-server process; `kill()` is SIGKILL, `start()` again reuses port and files."""

    def __init__(self, folder: Path, port: int | None = None, appendfsync: str = "always"):
        self.folder, self.port = Path(folder), port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            BINARY or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.folder), "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--save", "", "--protected-mode", "yes",
        ]  # fmt: skip
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{tail}")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server per test (its own port and files)."""
    if BINARY is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url
