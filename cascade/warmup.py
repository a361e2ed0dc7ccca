"""Warm-up: synthetic requests through a stage's own handler before its server reports SERVING.

A stage's first answers after start pay one-off costs (the ONNX / torch first run, the recall
index's first search, lazily built tables): several times a warm answer. StageServer.start sends
`rounds` synthetic requests through a scratch service (the loaded models and index, a registry of
its own) before the server binds its port, so health checks see SERVING only once the models
are warm, and the service metrics the stage serves count real traffic alone. What warm-up did
is counted apart: cascade_warmup_requests_total{stage, rpc, outcome}.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter

from cascade.v1 import common_pb2

log = logging.getLogger(__name__)

WARM_UP_USER = 1  # dataset user ids start at 1
WARM_UP_ITEMS = tuple(range(1, 33))  # a short candidate list of ids every dataset has


@dataclass(frozen=True)
class WarmUp:
    """What a stage warms: its handler's name on the servicer and a synthetic request."""

    rpc: str  # the servicer method, e.g. "Rank"
    request: Callable[[], Message]
    rounds: int = 2  # the second round catches what the first built lazily


class WarmUpAborted(Exception):
    """The handler aborted the synthetic request (its code and details)."""


class _Context:
    """The little of grpc.ServicerContext a stage handler uses: no deadline, no metadata."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return "warm-up"

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise WarmUpAborted(f"{code.name}: {details}")

    def abort_with_status(self, status: Any) -> NoReturn:
        raise WarmUpAborted(f"{status.code.name}: {status.details}")

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass


def candidates_request(request_type: Callable[..., Message]) -> Message:
    """A pre-rank, rank or rerank request: the warm-up user and WARM_UP_ITEMS, ten kept."""
    n = len(WARM_UP_ITEMS)
    candidates = common_pb2.CandidateList(
        item_ids=WARM_UP_ITEMS, scores=[1.0 - i / n for i in range(n)], channel_masks=[1] * n
    )
    user = common_pb2.UserContext(user_id=WARM_UP_USER)
    return request_type(user=user, candidates=candidates, count=10)


def warmup_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "cascade_warmup_requests",
        "Synthetic requests a stage sent through its own handler before reporting SERVING "
        "(never counted in cascade_rpc_requests_total); outcome ok or failed.",
        ["stage", "rpc", "outcome"],
        registry=registry,
    )


def warm_up(stage: str, service: Any, plan: WarmUp, counter: Counter) -> int:
    """Sends `plan.rounds` synthetic requests through `service`'s handler, counting each in
    `counter` (warmup_counter); returns how many were answered. A failure is logged and counted,
    never fatal: a stage whose data lacks the synthetic user or items still serves, only cold."""
    handler = getattr(service, plan.rpc)
    answered = 0
    started = time.perf_counter()
    for _ in range(plan.rounds):
        try:
            handler(plan.request(), _Context())
        except Exception as error:  # noqa: BLE001 - any failure leaves the stage serving, cold
            counter.labels(stage, plan.rpc, "failed").inc()
            log.warning("%s: warm-up %s failed: %s", stage, plan.rpc, error)
            continue
        counter.labels(stage, plan.rpc, "ok").inc()
        answered += 1
    log.info(
        "%s: warmed up with %d synthetic %s requests in %.0f ms",
        stage,
        answered,
        plan.rpc,
        (time.perf_counter() - started) * 1000,
    )
    return answered
