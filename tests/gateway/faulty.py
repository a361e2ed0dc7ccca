"""A real loopback gRPC server speaking one stage's contract, answering in a way a test chooses:
well (passing its candidates through), late, malformed, with a status code, or held until
released. The gateway calls it exactly as it calls the real stage."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from cascade.server import RunningServer, ServerSettings, serve
from cascade.v1 import (
    common_pb2,
    prerank_pb2,
    rank_pb2,
    recall_pb2,
    rerank_pb2,
)

QUIET = ServerSettings(port=0, metrics_port=-1, grace_s=0.0)
# stage -> (service, method, request type, response type)
CONTRACTS = {
    "recall": ("cascade.v1.Recall", "Recall", recall_pb2.RecallRequest, recall_pb2.RecallResponse),
    "prerank": (
        "cascade.v1.Prerank", "Prerank", prerank_pb2.PrerankRequest, prerank_pb2.PrerankResponse,
    ),
    "rank": ("cascade.v1.Rank", "Rank", rank_pb2.RankRequest, rank_pb2.RankResponse),
    "rerank": ("cascade.v1.Rerank", "Rerank", rerank_pb2.RerankRequest, rerank_pb2.RerankResponse),
}  # fmt: skip


@dataclass
class Faulty:
    """`mode`: "ok", "late" (waits until released or `late_s`), "malformed" (one score too
    many), "crash" (an unhandled exception: UNKNOWN), "hold" (waits until released, then ok),
    or a grpc.StatusCode name to abort with. `items`: what "ok" answers when the request has no
    candidates (recall)."""

    stage: str
    mode: str = "ok"
    items: tuple[int, ...] = (1, 2, 3)
    late_s: float = 10.0

    def __post_init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()
        self.release = threading.Event()
        self.requests: list = []
        self._lock = threading.Lock()
        self.server: RunningServer | None = None

    def handle(self, request, context):
        with self._lock:
            self.calls += 1
            self.requests.append(request)
        self.called.set()
        _, _, _, response_type = CONTRACTS[self.stage]
        mode = self.mode
        if mode in ("late", "hold"):
            self.release.wait(self.late_s)
        if mode == "crash":
            raise RuntimeError("injected bug")
        if mode in grpc.StatusCode.__members__:
            context.abort(grpc.StatusCode[mode], "injected")
        response = response_type()
        given = getattr(request, "candidates", None)
        if given is not None and len(given.item_ids):
            response.candidates.CopyFrom(given)
            keep = max(request.count, 1)
            for name in ("item_ids", "scores", "channel_masks"):
                del getattr(response.candidates, name)[keep:]
        else:
            ids = list(self.items)
            response.candidates.CopyFrom(
                common_pb2.CandidateList(
                    item_ids=ids,
                    scores=[1.0 - i / len(ids) for i in range(len(ids))],
                    channel_masks=[1] * len(ids),
                )
            )
        if mode == "malformed":
            response.candidates.scores.append(0.5)
        return response

    def start(self) -> Faulty:
        service, method, request_type, response_type = CONTRACTS[self.stage]
        handler = grpc.method_handlers_generic_handler(
            service,
            {
                method: grpc.unary_unary_rpc_method_handler(
                    self.handle,
                    request_deserializer=request_type.FromString,
                    response_serializer=response_type.SerializeToString,
                )
            },
        )

        def add(server: grpc.Server) -> list[str]:
            server.add_generic_rpc_handlers((handler,))
            return [service]

        self.server = serve(f"faulty-{self.stage}", add, QUIET)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.stop(0)
