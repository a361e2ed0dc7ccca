"""The channel merge: run every channel under its own time budget, then apply quotas.

By default (recall's `channel_workers = 0`) the channels run one after another in the request's
thread, in priority order: a channel whose budget (or the request's deadline) has already passed
when its turn comes is skipped and reported as a timeout, but a channel that is running cannot be
cut off: it finishes, however long it takes, and the channels after it may then be skipped. With
`channel_workers > 0` they run side by side in a thread pool and each answer is awaited only until
its budget runs out; a late channel is then reported as a timeout and left out of the answer, though
its thread still runs to the end. A channel that raises is reported as an error and skipped. Then,
in priority order, each channel fills up to its quota of `count` with items no earlier channel took,
and a second pass fills what is left (the fallback: popular, for a user the personal channels know
nothing about). Consumed items never pass. Every candidate keeps the tags of all channels that found
it and its best position in their answers; the order interleaves the channels in proportion to their
quotas and is deterministic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from cascade.candidates import Candidates, channel_bit
from cascade.telemetry import LATENCY_BUCKETS
from services.recall.channels import Channel, RecallContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelBudget:
    enabled: bool = True
    quota: float = 0.2  # share of `count` this channel may fill in the first pass
    # A channel not started by then (inline, the default) or not answered by then (thread pool) is
    # skipped (status "timeout") and counted.
    budget_ms: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.quota <= 1.0 or self.budget_ms <= 0:
            raise ValueError(f"quota must be in [0, 1] and budget_ms > 0, got {self}")


@dataclass
class ChannelReport:
    name: str
    returned: int = 0  # candidates the channel answered
    kept: int = 0  # candidates it contributed after filtering, quotas and de-duplication
    latency_ms: float = 0.0
    status: str = "ok"  # "ok", "empty", "timeout" or "error"


@dataclass
class MergeResult:
    candidates: Candidates
    reports: list[ChannelReport]


class ChannelMetrics:
    """Per-channel Prometheus series (label `channel`, one value per channel)."""

    def __init__(self, registry: CollectorRegistry):
        self.latency = Histogram(
            "cascade_recall_channel_latency_seconds",
            "Time a recall channel took (timeouts: the budget).",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.returned = Counter(
            "cascade_recall_channel_candidates",
            "Candidates a recall channel returned.",
            ["channel"],
            registry=registry,
        )
        self.kept = Counter(
            "cascade_recall_channel_kept",
            "Candidates a recall channel contributed to the merged "
            "list (after filters, quotas and de-duplication): the channel mix.",
            ["channel"],
            registry=registry,
        )
        self.errors = Counter(
            "cascade_recall_channel_errors",
            "Recall channel calls that raised.",
            ["channel"],
            registry=registry,
        )
        self.timeouts = Counter(
            "cascade_recall_channel_timeouts",
            "Recall channel calls skipped past their budget.",
            ["channel"],
            registry=registry,
        )

    def observe(self, report: ChannelReport) -> None:
        self.latency.labels(report.name).observe(report.latency_ms / 1000)
        self.returned.labels(report.name).inc(report.returned)
        self.kept.labels(report.name).inc(report.kept)
        if report.status == "error":
            self.errors.labels(report.name).inc()
        elif report.status == "timeout":
            self.timeouts.labels(report.name).inc()


class Merger:
    """Runs channels (in the given priority order) and merges their answers."""

    def __init__(
        self,
        channels: Sequence[Channel],
        budgets: Mapping[str, ChannelBudget],
        fallback: str = "popular",
        overfetch: float = 1.5,
        max_workers: int = 8,
        metrics: ChannelMetrics | None = None,
    ):
        self.channels = [c for c in channels if budgets.get(c.name, ChannelBudget()).enabled]
        self.budgets = {c.name: budgets.get(c.name, ChannelBudget()) for c in self.channels}
        self.bits = np.array([channel_bit(c.name) for c in self.channels], dtype=np.uint32)
        self.fallback = fallback
        self.overfetch = overfetch
        self.metrics = metrics
        # max_workers 0: channels run one after another in the calling thread. In-process numpy
        # and FAISS channels gain nothing from threads under the GIL, and handing each to a pool
        # cost more CPU than all of them together; but a channel can then only be skipped before
        # it starts, not cut off while it runs (threads suit channels that call remote stores).
        self._pool = (
            futures.ThreadPoolExecutor(max_workers, thread_name_prefix="recall-channel")
            if max_workers
            else None
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def recall(
        self,
        context: RecallContext,
        count: int,
        consumed: np.ndarray,
        deadline: float | None = None,
        quotas: Mapping[str, float] | None = None,
    ) -> MergeResult:
        """Up to `count` merged candidates; `deadline` is a time.perf_counter() value; `quotas`
        replace the configured quotas of the channels they name, for this request only (an
        experiment arm's channel mix)."""
        quotas = {c.name: self.budgets[c.name].quota for c in self.channels} | {
            name: share for name, share in (quotas or {}).items() if name in self.budgets
        }
        answers, reports = self._run(context, count, len(consumed), deadline, quotas)
        candidates, kept = self._merge(answers, count, consumed, quotas)
        for report, n in zip(reports, kept, strict=True):
            report.kept = int(n)
            if self.metrics is not None:
                self.metrics.observe(report)
        return MergeResult(candidates, reports)

    def _fetch_size(self, name: str, count: int, n_consumed: int, quotas: Mapping) -> int:
        # Ask for more than the quota: consumed items and other channels' picks are removed later.
        if name == self.fallback:
            return count + n_consumed
        return math.ceil(quotas[name] * count * self.overfetch) + n_consumed

    def _run(
        self,
        context: RecallContext,
        count: int,
        n_consumed: int,
        deadline: float | None,
        quotas: Mapping,
    ):
        if self._pool is None:
            return self._run_inline(context, count, n_consumed, deadline, quotas)
        started = time.perf_counter()
        pending = [
            self._pool.submit(
                _timed, c, context, self._fetch_size(c.name, count, n_consumed, quotas)
            )
            for c in self.channels
        ]
        answers, reports = [], []
        for channel, future in zip(self.channels, pending, strict=True):
            until = started + self.budgets[channel.name].budget_ms / 1000
            if deadline is not None:
                until = min(until, deadline)
            report = ChannelReport(channel.name)
            try:
                (ids, scores), seconds = future.result(
                    timeout=max(0.0, until - time.perf_counter())
                )
                ids = np.asarray(ids, dtype=np.int64)
                report.returned, report.latency_ms = len(ids), seconds * 1000
                report.status = "ok" if len(ids) else "empty"
            except futures.TimeoutError:
                future.cancel()
                ids = np.empty(0, np.int64)
                report.status = "timeout"
                report.latency_ms = (time.perf_counter() - started) * 1000
            except Exception:
                log.exception("recall channel %s failed", channel.name)
                ids = np.empty(0, np.int64)
                report.status = "error"
                report.latency_ms = (time.perf_counter() - started) * 1000
            answers.append(ids)
            reports.append(report)
        return answers, reports

    def _run_inline(
        self,
        context: RecallContext,
        count: int,
        n_consumed: int,
        deadline: float | None,
        quotas: Mapping,
    ):
        """Channels in priority order in this thread; one whose budget (or the request's
        deadline) has passed by its turn is skipped and reported as a timeout."""
        started = time.perf_counter()
        answers, reports = [], []
        for channel in self.channels:
            until = started + self.budgets[channel.name].budget_ms / 1000
            if deadline is not None:
                until = min(until, deadline)
            report = ChannelReport(channel.name)
            ids = np.empty(0, np.int64)
            if time.perf_counter() >= until:
                report.status = "timeout"
            else:
                try:
                    (found, _), seconds = _timed(
                        channel, context, self._fetch_size(channel.name, count, n_consumed, quotas)
                    )
                    ids = np.asarray(found, dtype=np.int64)
                    report.returned, report.latency_ms = len(ids), seconds * 1000
                    report.status = "ok" if len(ids) else "empty"
                except Exception:
                    log.exception("recall channel %s failed", channel.name)
                    report.status = "error"
            answers.append(ids)
            reports.append(report)
        return answers, reports

    def _merge(
        self, answers: list[np.ndarray], count: int, consumed: np.ndarray, quotas: Mapping
    ) -> tuple[Candidates, np.ndarray]:
        n_channels = len(answers)
        # Work on positions in `tagged` (every item any channel found, sorted once) so that the set
        # operations below are boolean masks: np.isin sorts on every call (this merge took 0.7 ms
        # with it), and masks over raw ids would be megabytes per request on a large catalog.
        answers = [ids[ids > 0] for ids in answers]
        if not answers:  # every channel disabled
            answers = [np.empty(0, np.int64)]
        tagged, inverse = np.unique(np.concatenate(answers), return_inverse=True)
        blocked = np.isin(tagged, consumed)
        masks = np.zeros(len(tagged), dtype=np.uint32)
        # Each item's best place in any finding channel's answer (consumed items left out): one
        # number per candidate that the ranker reads beside the mask (common.proto).
        best = np.zeros(len(tagged), dtype=np.uint32)
        usable = []
        ends = np.cumsum([len(ids) for ids in answers])
        for found, bit in zip(np.split(inverse, ends[:-1]), self.bits, strict=True):
            found = found[~blocked[found]]
            _, first = np.unique(found, return_index=True)  # a channel's repeats: keep the first
            found = found[np.sort(first)]
            masks[found] |= bit  # every channel that found an item tags it, quota or not
            place = np.arange(1, len(found) + 1, dtype=np.uint32)
            best[found] = np.where(best[found] > 0, np.minimum(best[found], place), place)
            usable.append(found)

        slots = [math.floor(quotas[c.name] * count) for c in self.channels]  # per channel
        taken = np.zeros(len(tagged), dtype=bool)
        n_taken = 0
        chosen, keys, owners = [], [], []
        for second_pass in (False, True):
            for c in range(n_channels):
                room = count - n_taken
                if room <= 0:
                    break
                limit = room if second_pass else min(room, slots[c])
                new = usable[c][~taken[usable[c]]][:limit]
                if len(new) == 0:
                    continue
                position = np.arange(len(new), dtype=np.float64)
                # First pass: channels interleave in proportion to their quotas; second: after.
                key = (
                    1.0 + (n_taken + position) / count
                    if second_pass
                    else ((position + 0.5) / max(slots[c], 1))
                )
                chosen.append(new)
                keys.append(key)
                owners.append(np.full(len(new), c))
                taken[new] = True
                n_taken += len(new)
        if not chosen:
            empty = Candidates(
                np.empty(0, np.int64),
                np.empty(0, np.float32),
                np.empty(0, np.uint32),
                np.empty(0, np.uint32),
            )
            return empty, np.zeros(n_channels, np.int64)
        ids, key, owner = (np.concatenate(x) for x in (chosen, keys, owners))
        order = np.lexsort((owner, key))
        found, owner = ids[order], owner[order]
        ids = tagged[found]
        scores = (1.0 - np.arange(len(ids)) / len(ids)).astype(np.float32)
        candidate_masks = masks[found]
        kept = np.bincount(owner, minlength=n_channels)
        return Candidates(ids, scores, candidate_masks, best[found]), kept


def _timed(channel: Channel, context: RecallContext, k: int):
    started = time.perf_counter()
    answer = channel.retrieve(context, k)
    return answer, time.perf_counter() - started
