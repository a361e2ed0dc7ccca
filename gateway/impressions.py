"""Impression records off the answer's critical path: a bounded queue and one writer thread.

Recommend enqueues what it answered (never waits: a full queue drops the record and counts it);
the writer drains the queue in batches (waiting up to `linger_s` after the first record for more:
a frame's fixed cost is paid once per batch, not once per answer), turns each answer into one
IMPRESSIONS row (the items in display order with their positions, every stage's score for each
shown item, channel masks, model versions, degraded stages) and appends the batch to the event log.
`flush()` returns once what was submitted before it is written; outside the gateway's process the
gauge `cascade_gateway_impressions_pending` at 0 says the same.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cascade.eventlog import IMPRESSIONS, EventLog
from cascade.v1.common_pb2 import CandidateList
from gateway.pipeline import STAGES, GatewayMetrics, Served

log = logging.getLogger(__name__)
BATCH = 256  # rows per append at most


@dataclass
class Shown:
    """One Recommend answer as the writer needs it."""

    request_id: str
    user_id: int  # dense; 0 = served as anonymous
    user_key: str
    request_time_ms: int
    item_ids: list[int]
    channel_masks: list[int]
    degraded_stages: list[str]
    served: Served
    arm: str = ""  # the experiment arm that served it (gateway/arms.py)
    shown_ms: int = 0  # the request's time (its clock): a shown page's TTL runs on it
    explored: list[int] = field(default_factory=list)  # positions the traffic pool filled


def impression_row(shown: Shown) -> dict:
    """The IMPRESSIONS row of one answer. A stage that degraded (its fallback answered) has no
    scores: []; an item missing from a stage's list scores NaN (an explored upload was set aside
    after recall: it has no rank or rerank score; its `explored` flag is True)."""
    row = {
        "request_id": shown.request_id,
        "user_id": shown.user_id,
        "user_key": shown.user_key,
        "request_time_ms": shown.request_time_ms,
        "arm": shown.arm,
        "item_ids": shown.item_ids,
        "positions": list(range(len(shown.item_ids))),
        "channel_masks": shown.channel_masks or [0] * len(shown.item_ids),
        "model_versions": json.dumps(shown.served.versions, sort_keys=True),
        "degraded_stages": shown.degraded_stages,
        "explored": [p in shown.explored for p in range(len(shown.item_ids))],
    }
    for stage in STAGES:
        candidates = shown.served.lists.get(stage)
        scores: list[float] = []
        if stage not in shown.degraded_stages and candidates is not None and candidates.scores:
            scores = stage_scores(candidates, shown.item_ids)
        row[f"{stage}_scores"] = scores
    return row


def stage_scores(candidates: CandidateList, shown: list[int]) -> list[float]:
    """The stage's score of each shown item (NaN where the stage's list lacks it); vectorised,
    since recall's list holds about 2,000 candidates and this runs in the gateway's process."""
    ids = np.asarray(candidates.item_ids, dtype=np.int64)
    scores = np.asarray(candidates.scores, dtype=np.float32)
    # (shown, candidates): the long axis innermost, so numpy runs 10 long loops, not 2,000 short
    # ones (the writer's CPU per answer in `make bench-overload`, gateway row).
    match = np.asarray(shown, dtype=np.int64)[:, None] == ids[None, :]
    found = match.any(axis=1)
    return np.where(found, scores[match.argmax(axis=1)], np.nan).tolist()


class ImpressionWriter:
    """Logs each answer, and with a shared store also records the page as shown to the user
    (`record_shown(user_id, item_ids, time_ms)`, rerank's already-shown filter), in one thread."""

    def __init__(
        self,
        event_log: EventLog,
        metrics: GatewayMetrics,
        capacity: int = 10_000,
        record_shown: Callable[[int, np.ndarray, int], None] | None = None,
        linger_s: float = 0.0,
    ):
        self.log = event_log
        self.linger_s = linger_s
        self.metrics = metrics
        self.record_shown = record_shown
        # None stops the writer; an Event asks it to write what is queued and set the event.
        self._queue: queue.Queue[Shown | threading.Event | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="impression-writer", daemon=True)
        self._thread.start()

    def submit(self, shown: Shown) -> None:
        """Never blocks: when the writer is behind, the record is dropped and counted."""
        self.metrics.impressions_pending.inc()  # before the writer can take it
        try:
            self._queue.put_nowait(shown)
        except queue.Full:
            self.metrics.impressions_pending.dec()
            self.metrics.impressions.labels("queue_full").inc()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Blocks until every answer submitted before the call is logged (or counted as not
        logged), without waiting out `linger_s`; False when that took longer than `timeout_s`."""
        written = threading.Event()
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(written, timeout=timeout_s)
        except queue.Full:
            return False
        return written.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = 5.0) -> None:
        """Writes what is queued, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            batch = [self._take(self._queue.get())]
            until = time.monotonic() + self.linger_s
            while isinstance(batch[-1], Shown) and len(batch) < BATCH:
                try:
                    wait = until - time.monotonic()
                    shown = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(self._take(shown))
            rows = [shown for shown in batch if isinstance(shown, Shown)]
            if rows:
                self._write(rows)
                self.metrics.impressions_pending.dec(len(rows))
            if isinstance(batch[-1], threading.Event):
                batch[-1].set()  # a flush: everything before it is written
            elif batch[-1] is None:
                return

    def _take(self, shown: Shown | threading.Event | None) -> Shown | threading.Event | None:
        """One answer off the queue: recorded as shown at once (the next request may come in
        milliseconds); only its log row waits for the batch."""
        if isinstance(shown, Shown) and self.record_shown is not None:
            self._record_shown([shown])
        return shown

    def _write(self, batch: list[Shown]) -> None:
        try:
            table = pa.Table.from_pylist([impression_row(s) for s in batch], schema=IMPRESSIONS)
            self.log.append_impressions(table)
        except Exception as error:  # the writer must outlive a bad disk or a Redis restart
            self.metrics.impressions.labels("log_error").inc(len(batch))
            log.warning("gateway: %d impression records not logged: %s", len(batch), error)
            return
        self.metrics.impressions.labels("logged").inc(len(batch))

    def _record_shown(self, batch: list[Shown]) -> None:
        record = self.record_shown
        if record is None:  # no shared store: rerank's embedded filter sees the pages itself
            return
        for shown in batch:
            # A shadow ranking (gateway/shadow.py, arm "shadow:NAME") was never shown.
            if shown.user_id <= 0 or not shown.item_ids or shown.arm.startswith("shadow:"):
                continue
            try:
                items = np.asarray(shown.item_ids, dtype=np.int64)
                record(shown.user_id, items, shown.shown_ms)
            except Exception as error:  # a store outage must not stop the writer
                log.warning("gateway: recording a shown page failed: %s", error)
