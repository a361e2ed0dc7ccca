"""Hot model reload: a running service swaps in a newly published bundle without failing a call.

A daemon thread polls the folder the service's bundle name (usually the `current` symlink that
`publish` flips) resolves to. When it points somewhere new, the service's own loader builds the new
model beside the old one, which keeps serving meanwhile; then `swap` replaces one reference.
Handlers read that reference once per request, so every request runs wholly on one version. A
bundle that fails to load is logged and counted, the old version keeps serving, and the watcher
tries again only once the name points somewhere else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)


class Reloader:
    def __init__(
        self,
        stage: str,
        artifacts: Path,
        bundle: str,
        load: Callable[[], object],
        swap: Callable[[object], str],
        interval_s: float,
    ):
        """`load` builds the service's model from the bundle name (as at start-up); `swap`
        installs it and returns the version now served. `interval_s` <= 0: never poll."""
        self.stage, self.load, self.swap, self.interval_s = stage, load, swap, interval_s
        self.link = Path(artifacts) / bundle
        self.folder = self._target()  # what the service loaded at start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outcomes: Counter | None = None

    @classmethod
    def for_service(
        cls, stage: str, settings, load: Callable[[], object], swap: Callable[[object], str]
    ) -> Reloader:
        """The reloader of a service whose settings carry `artifacts`, `bundle` and
        `server.reload_interval_s` (every stage's and the gateway's do)."""
        return cls(
            stage,
            settings.artifacts,
            settings.bundle,
            load,
            swap,
            settings.server.reload_interval_s,
        )

    def start(self, registry: CollectorRegistry) -> None:
        self._outcomes = Counter(
            "cascade_model_reloads",
            "Hot reloads of a newly published bundle, by outcome (ok, failed).",
            ["stage", "outcome"],
            registry=registry,
        )
        if self.interval_s > 0:
            self._thread = threading.Thread(
                target=self._poll, name=f"{self.stage}-reload", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def check(self) -> bool:
        """Loads and swaps in the bundle when the name points at a new folder; True if swapped."""
        folder = self._target()
        if folder == self.folder:
            return False
        self.folder = folder  # a failure is not retried until the name moves again
        try:
            model = self.load()
        except Exception:  # a broken bundle must not take down a serving process
            log.exception("%s: could not load the bundle at %s; still serving", self.stage, folder)
            self._count("failed")
            return False
        version = self.swap(model)
        log.info("%s: now serving %s (hot reload from %s)", self.stage, version, folder)
        self._count("ok")
        return True

    def _poll(self) -> None:
        # Loading a bundle takes seconds of CPU: at the lowest priority (Linux sets niceness per
        # thread), requests served meanwhile on the old version get the cores first.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # keep polling whatever happened
                log.exception("%s: reload check failed", self.stage)

    def _target(self) -> Path:
        return self.link.resolve()

    def _count(self, outcome: str) -> None:
        if self._outcomes is not None:
            self._outcomes.labels(self.stage, outcome).inc()
