"""The cascade as plain function calls in one process: the yardstick for the microservice overhead.

The same models and the same data as the stack: recall's channels and merger, the ranker's ONNX
scorer and the reranker, loaded from the same bundle and called directly with numpy arrays (no
protobuf, no sockets, no gateway). Prerank runs only when its stage is built; otherwise recall's
order is truncated to the pre-rank size, exactly what the gateway does without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from app.stack import prerank_available
from cascade.candidates import Candidates
from cascade.config import load_settings
from cascade.telemetry import new_registry
from cascade.v1 import common_pb2


class InProcessCascade:
    def __init__(
        self, artifacts: Path, data_dir: Path, bundle: str = "current", funnel=(2000, 500, 100)
    ):
        from services.rank.server import RankSettings, load_scorer
        from services.recall.server import RecallService, RecallSettings, open_recall
        from services.rerank.server import RerankSettings, load_reranker

        where = {"artifacts": str(artifacts), "bundle": bundle, "data_dir": str(data_dir)}

        def settings(cls):
            return load_settings(cls, overrides=where, environ={})

        recall_settings = settings(RecallSettings)
        self.recall = RecallService(open_recall(recall_settings), recall_settings, new_registry())
        self.scorer = load_scorer(settings(RankSettings))
        self.reranker = load_reranker(settings(RerankSettings))
        self.prerank = None
        if prerank_available(Path(artifacts), bundle):
            from services.prerank.server import PrerankSettings
            from services.prerank.server import load_scorer as load_prerank

            self.prerank = load_prerank(settings(PrerankSettings))[1]
        self.recall_size, self.prerank_size, self.rank_size = funnel
        # CPU seconds spent in each stage's code so far (this process, every thread), to set
        # beside each stage process's CPU per request.
        self.cpu = dict.fromkeys(("recall", "prerank", "rank", "rerank"), 0.0)
        self._clock = time.process_time()

    def _lap(self, stage: str) -> None:
        now = time.process_time()
        self.cpu[stage] += now - self._clock
        self._clock = now

    def recommend(self, user_id: int, count: int = 10) -> np.ndarray:
        """The page of item ids for one user, through recall -> prerank -> rank -> rerank."""
        self._clock = time.process_time()
        context = self.recall._context(common_pb2.UserContext(user_id=user_id), None)
        consumed = np.union1d(self.recall.state.store.consumed(user_id), context.recent_items)
        merged = self.recall.merger.recall(context, self.recall_size, consumed, None).candidates
        self._lap("recall")
        if self.prerank is not None:
            order, _, _ = self.prerank.top(
                user_id, merged.item_ids, self.prerank_size, context.recent_items
            )
            candidates = merged.take(order)
        else:
            candidates = merged.take(slice(0, self.prerank_size))
        self._lap("recall" if self.prerank is None else "prerank")
        fused, _ = self.scorer.score(user_id, candidates.item_ids, context.recent_items)
        order = np.argsort(-fused, kind="stable")[: self.rank_size]
        ranked = Candidates(
            candidates.item_ids[order],
            fused[order].astype(np.float32),
            candidates.channel_masks[order],
        )
        self._lap("rank")
        page = self.reranker.rerank(
            ranked,
            count,
            user_id=user_id,
            recent_items=context.recent_items,
            request_ts=int(time.time()),
        )
        self._lap("rerank")
        return page.candidates.item_ids


def measure(cascade: InProcessCascade, users: np.ndarray, count: int = 10) -> list[float]:
    """Latency in milliseconds of one recommend per user, one at a time."""
    latencies = []
    for user_id in users.tolist():
        started = time.perf_counter()
        cascade.recommend(user_id, count)
        latencies.append(1e3 * (time.perf_counter() - started))
    return latencies
