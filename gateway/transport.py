"""How the funnel (gateway/pipeline.py) reaches its stages: over gRPC, one ReplicaPool per stage
(the served gateway, the end-to-end evaluation), or in process, calling each stage's servicer
object directly (the in-process benchmark: the same requests, no sockets).

Both give `Cascade` the same two calls per stage: `pick()` a replica and `record()` the outcome;
a replica's `stub(stub_class)` answers the stage's RPC method with (request, timeout=...).
`new_cascade` builds the funnel the gateway's settings describe on either.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from cascade.topology import STAGES
from gateway.catalog import Catalog
from gateway.pipeline import Cascade, Funnel, GatewayMetrics, StagePool
from gateway.replicas import ReplicaMetrics, ReplicaPool, channel_factory
from gateway.settings import GatewaySettings


def new_cascade(
    settings: GatewaySettings,
    catalog: Catalog,
    pools: Mapping[str, StagePool],
    metrics: GatewayMetrics,
) -> Cascade:
    """The funnel the settings describe (cuts, creator cap, breakers), calling `pools` and
    falling back on the catalog's popular items, creators and users' logged items."""
    funnel = Funnel(
        settings.recall_count,
        settings.prerank_count,
        settings.rank_count,
        settings.max_per_creator,
        settings.breaker_failures,
        settings.breaker_cooldown_s,
        pool=settings.pool,
    )
    return Cascade(
        dict(pools),
        funnel,
        catalog.popular,
        catalog.creators,
        metrics,
        catalog.consumed,
        catalog.uploaded,
    )


def stage_pools(
    settings: GatewaySettings,
    metrics: ReplicaMetrics | None,
    targets: Mapping[str, str] | None = None,
    retry_methods: Sequence[str] | None = None,
) -> dict[str, ReplicaPool]:
    """One replica pool per stage, at `targets` (default: the settings' stage targets). Stage
    calls retry UNAVAILABLE inside their deadline (all are idempotent); `retry_methods=[]` turns
    that off (recall's Record: a duplicate would count an event twice)."""
    client = settings.stage_client()
    credentials = [
        f
        for f in (settings.stage_tls_ca, settings.stage_tls_cert, settings.stage_tls_key)
        if f is not None
    ]
    return {
        stage: ReplicaPool(
            stage,
            target,
            channel_factory(client, retry_methods),
            settings.breaker_failures,
            settings.breaker_cooldown_s,
            metrics,
            settings.resolve_interval_s,
            settings.probe_timeout_s,
            settings.replica_pick,
            credentials,
        )
        for stage, target in (targets or settings.targets()).items()
    }


class LocalError(grpc.RpcError, grpc.Call):
    """A servicer's abort, raised to the caller as a gRPC client sees it (code and details)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple:
        return ()

    def trailing_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0  # the call is over

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


class LocalContext:
    """The part of grpc.ServicerContext a stage servicer uses: its deadline and abort."""

    def __init__(self, timeout: float | None, metadata: tuple[tuple[str, str], ...] = ()):
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.metadata = metadata

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise LocalError(code, details)

    def abort_with_status(self, status: Any) -> None:
        raise LocalError(status.code, status.details)

    def invocation_metadata(self) -> tuple:
        return self.metadata


class _LocalStub:
    """A stage servicer called as a stub: `stub.Rank(request, timeout=t)`."""

    def __init__(self, servicer: object):
        self.servicer = servicer

    def __getattr__(self, method: str) -> Any:
        handler = getattr(self.servicer, method)

        def call(
            request: object,
            timeout: float | None = None,
            metadata: tuple[tuple[str, str], ...] | None = None,
        ) -> object:
            return handler(request, LocalContext(timeout, metadata or ()))

        return call


class LocalReplica:
    """The one in-process replica of a stage: its servicer object."""

    def __init__(self, stage: str, servicer: object):
        self.stage, self.address = stage, f"in-process:{stage}"
        self._stub = _LocalStub(servicer)

    def stub(self, stub_class: type) -> _LocalStub:
        return self._stub


class LocalPool:
    """A stage served in this process: every call goes to its servicer; never ejected. Without
    a servicer (a stage the bundle does not build) no replica answers: the stage's fallback."""

    def __init__(self, stage: str, servicer: object | None):
        self.replica = None if servicer is None else LocalReplica(stage, servicer)

    def pick(self, exclude: object | None = None) -> LocalReplica | None:
        return None if exclude is self.replica else self.replica

    def record(self, replica: object, ok: bool | None) -> None:
        pass

    def close(self) -> None:
        pass


def local_pools(servicers: Mapping[str, object | None]) -> dict[str, LocalPool]:
    """Each stage's servicer object as its pool (every stage named; None: not built)."""
    missing = [stage for stage in STAGES if stage not in servicers]
    if missing:
        raise ValueError(f"no servicer for the stages {missing}")
    return {stage: LocalPool(stage, servicers[stage]) for stage in STAGES}
