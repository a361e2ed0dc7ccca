"""Shadow scoring: a second arm's ranking of the same request, computed after the answer and
logged beside it, never shown.

With the gateway's `shadow_arm` setting (the name of one of its `arms`), every request served by
another arm is run again through the cascade with the shadow arm's funnel, on one background
thread, and its page is logged as an impression record with the served page's request_id and
the arm `shadow:NAME`: offline, the two rankings of one request compare row by row. The shadow
never delays an answer (a bounded number wait; beyond that a request gets no shadow, counted),
is never recorded as shown to the user, and is not a training example (training/fold.py skips it).
Its stage calls carry the metadata `cascade-traffic: shadow`, so every stage counts them under
traffic="shadow" in its RPC metrics, apart from the served traffic (traffic="live").
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter

from cascade.telemetry import SHADOW_METADATA
from cascade.v1 import common_pb2
from gateway.arms import Arm, funnel_of
from gateway.impressions import ImpressionWriter, Shown
from gateway.pipeline import Budget, Cascade, Served

log = logging.getLogger(__name__)
SHADOW_PREFIX = "shadow:"  # arm names cannot contain ':' (gateway/arms.py), so no collision


class Shadow:
    def __init__(
        self,
        arm: Arm,
        cascade: Cascade,
        impressions: ImpressionWriter,
        deadline_s: float,
        shares: dict[str, float],
        registry: CollectorRegistry,
        max_pending: int = 8,
    ):
        self.arm, self.cascade, self.impressions = arm, cascade, impressions
        self.deadline_s, self.shares = deadline_s, shares
        self._slots = threading.Semaphore(max_pending)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.outcomes = Counter(
            "cascade_gateway_shadow_rankings",
            "Shadow rankings by outcome (logged, dropped: too many waiting, failed).",
            ["outcome"],
            registry=registry,
        )

    def submit(self, shown: Shown, user: common_pb2.UserContext, count: int) -> None:
        """Queues the shadow ranking of an answered request (never blocks)."""
        if not self._slots.acquire(blocking=False):
            self.outcomes.labels("dropped").inc()
            return
        self._executor.submit(self._run, shown, user, count)

    def _run(self, shown: Shown, user: common_pb2.UserContext, count: int) -> None:
        try:
            funnel = funnel_of(self.cascade.funnel, self.arm.overrides)
            served = Served()
            budget = Budget(self.deadline_s, self.shares)
            answer = self.cascade.run(
                user, count, budget, False, served, None, funnel, metadata=SHADOW_METADATA
            )
            self.impressions.submit(
                dataclasses.replace(
                    shown,
                    item_ids=list(answer.items.item_ids),
                    channel_masks=list(answer.items.channel_masks),
                    degraded_stages=list(answer.degraded_stages),
                    served=served,
                    arm=SHADOW_PREFIX + self.arm.name,
                )
            )
            self.outcomes.labels("logged").inc()
        except Exception:  # a shadow must never take the gateway down
            log.exception("gateway: shadow ranking failed")
            self.outcomes.labels("failed").inc()
        finally:
            self._slots.release()

    def close(self) -> None:
        """Finishes the shadow rankings waiting (their records reach the writer)."""
        self._executor.shutdown(wait=True)
