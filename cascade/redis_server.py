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

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls, directory: Path, port: int = 0, binary: str | None = None, timeout_s: float = 20.0
    ) -> RedisProcess:
        """Starts the server (port 0: a free one) and waits until it answers PING."""
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
        ]
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = cls(directory, port, process.pid, binary, process)
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
        again = RedisProcess.start(self.directory, self.port, self.binary, timeout_s)
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
