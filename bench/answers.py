"""One traced Recommend under load and its outcome, shared by the fault drills (bench/faults.py,
bench/replica_pause.py): the gateway's debug trace gives each stage's latency and model version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from cascade.v1 import gateway_pb2


@dataclass
class Answer:
    sent_s: float  # when the request was due, from the start of the load
    latency_ms: float
    code: str  # "OK" or the gRPC status name
    degraded: tuple[str, ...] = ()
    stages: dict[str, float] = field(default_factory=dict)  # stage -> latency ms
    versions: dict[str, str] = field(default_factory=dict)  # stage -> model version


async def ask_traced(stub, user_id: int, due: float, start: float, timeout_s: float) -> Answer:
    request = gateway_pb2.RecommendRequest(user_id=user_id, count=10, debug=True)
    try:
        reply = await stub.Recommend(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return Answer(due - start, 1e3 * (time.perf_counter() - due), error.code().name)
    return Answer(
        due - start,
        1e3 * (time.perf_counter() - due),
        "OK",
        tuple(reply.degraded_stages),
        {t.stage: t.latency_ms for t in reply.trace},
        {t.stage: t.model_version for t in reply.trace if t.model_version},
    )


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}
