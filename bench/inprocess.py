"""The cascade in one process: the yardstick for the microservice overhead.

The gateway's own funnel (gateway/pipeline.py, the one the gateway serves) with an in-process
transport (gateway/transport.py): each stage's servicer, built by its server module's own
`load` and `service` from the same bundle and data as the stack, is called directly with the
same protobuf requests, so what remains between this and the stack is the sockets, the
(de)serialisation and the processes. A stage the bundle does not build (prerank) falls back as in
the gateway: recall's order, truncated.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.stack import prerank_available
from app.stages import SERVER_MODULES
from cascade.config import load_settings
from cascade.profiles import Profile, layers
from cascade.telemetry import new_registry
from cascade.topology import STAGES
from cascade.v1 import common_pb2, gateway_pb2
from gateway.catalog import load_catalog
from gateway.pipeline import Budget, GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.transport import local_pools, new_cascade


class _Timed:
    """A stage servicer whose calls add their CPU seconds to `owner.cpu[stage]` (read through
    the owner: a caller may reset `cpu` by replacing the dict)."""

    def __init__(self, stage: str, servicer: object, owner: InProcessCascade):
        self.stage, self.servicer, self.owner = stage, servicer, owner

    def __getattr__(self, method: str) -> Any:
        handler = getattr(self.servicer, method)

        def call(request: object, context: object) -> object:
            started = time.process_time()
            try:
                return handler(request, context)
            finally:
                self.owner.cpu[self.stage] += time.process_time() - started

        return call


class InProcessCascade:
    """Every stage's servicer in this process behind the gateway's funnel. `profiles` are read
    as the services read them (deploy/profiles), and `overrides` (stage or "gateway" -> settings,
    as on a command line) win over them."""

    def __init__(
        self,
        artifacts: Path,
        data_dir: Path,
        bundle: str = "current",
        profiles: Sequence[Profile] = (),
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        where = {"artifacts": str(artifacts), "bundle": bundle, "data_dir": str(data_dir)}
        overrides = overrides or {}
        # CPU seconds spent in each stage's code so far (this process, every thread), to set
        # beside each stage process's CPU per request.
        self.cpu = dict.fromkeys(STAGES, 0.0)
        servicers: dict[str, object | None] = {}
        for stage in STAGES:
            if stage == "prerank" and not prerank_available(Path(artifacts), bundle):
                servicers[stage] = None
                continue
            server = importlib.import_module(SERVER_MODULES[stage]).SERVER
            settings = load_settings(
                server.settings,
                overrides=where | dict(overrides.get(stage, {})),
                environ={},
                profiles=layers(profiles, stage),
            )
            servicer = server.service(settings, server.load(settings), new_registry())
            servicers[stage] = _Timed(stage, servicer, self)
        self.settings = load_settings(
            GatewaySettings,
            overrides=where | dict(overrides.get("gateway", {})),
            environ={},
            profiles=layers(profiles, "gateway"),
        )
        self.cascade = new_cascade(
            self.settings,
            load_catalog(self.settings),
            local_pools(servicers),
            GatewayMetrics(new_registry()),
        )

    def recommend(
        self,
        user_id: int,
        count: int = 10,
        stop_after: str = STAGES[-1],
        quotas: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """The page of item ids for one user, through the funnel up to `stop_after`, each stage
        within the gateway's longest budget (its max_deadline_s); `quotas` replace recall's
        channel quotas for this request, as an experiment arm's do."""
        return np.asarray(
            self.answer(user_id, count, stop_after, quotas).items.item_ids, dtype=np.int64
        )

    def answer(
        self,
        user_id: int,
        count: int = 10,
        stop_after: str = STAGES[-1],
        quotas: Mapping[str, float] | None = None,
    ) -> gateway_pb2.RecommendResponse:
        """The whole response of `recommend` (its `degraded` flag included)."""
        budget = Budget(self.settings.max_deadline_s, self.settings.shares())
        user = common_pb2.UserContext(user_id=user_id)
        funnel = self.cascade.funnel
        if quotas is not None:
            funnel = replace(funnel, channel_quotas=tuple(sorted(quotas.items())))
        return self.cascade.run(
            user, count, budget, debug=False, stop_after=stop_after, funnel=funnel
        )


def measure(cascade: InProcessCascade, users: np.ndarray, count: int = 10) -> list[float]:
    """Latency in milliseconds of one recommend per user, one at a time."""
    latencies = []
    for user_id in users.tolist():
        started = time.perf_counter()
        cascade.recommend(user_id, count)
        latencies.append(1e3 * (time.perf_counter() - started))
    return latencies
