"""Starts and stops the console beside a local stack (`cascade up --console`, `cascade down`):
one process, its state in RUN_DIR/console.json, its log in RUN_DIR/console.log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cascade.server import read_port_file

MODULE = "app.console.server"
STATE_FILE = "console.json"


class ConsoleError(RuntimeError):
    """The console did not start; the message ends with its log tail."""


@dataclass(frozen=True)
class Console:
    pid: int
    url: str
    log: str


def start(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8090,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> Console:
    """Launches the console for the stack in run_dir and waits until it answers /healthz.
    `env`: more CASCADE_CONSOLE_* settings (the explain token, a Prometheus URL, ...)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop(run_dir)
    port_file, log_path = run_dir / "console.ports.json", run_dir / "console.log"
    port_file.unlink(missing_ok=True)
    settings = {
        "CASCADE_CONSOLE_HOST": host,
        "CASCADE_CONSOLE_PORT": str(port),
        "CASCADE_CONSOLE_PORT_FILE": str(port_file),
        "CASCADE_CONSOLE_RUN_DIR": str(run_dir),
    }
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", MODULE],
            env=os.environ | settings | (env or {}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while (ports := read_port_file(port_file)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = "\n".join(log_path.read_text().splitlines()[-15:])
            raise ConsoleError(f"the console did not start:\n{tail}")
        time.sleep(0.05)
    shown_host = f"[{host}]" if ":" in host else host
    console = Console(process.pid, f"http://{shown_host}:{ports[0]}/", str(log_path))
    while not _answers(console.url + "healthz"):
        if time.monotonic() > deadline:
            process.kill()
            raise ConsoleError(f"the console bound {console.url} but does not answer")
        time.sleep(0.05)
    (run_dir / STATE_FILE).write_text(
        json.dumps({"pid": console.pid, "url": console.url, "log": console.log})
    )
    return console


def stop(run_dir: Path, grace_s: float = 5.0) -> bool:
    """Stops the console recorded in run_dir (only if that pid still runs the console)."""
    state = Path(run_dir) / STATE_FILE
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    state.unlink()
    try:
        if MODULE.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
    except OSError:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return answer.status in (200, 401)
    except OSError:
        return False
