"""The merge: quotas, de-duplication keeping every tag, consumed filtering, order, budgets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cascade.candidates import channel_bit, channels_of
from services.recall.channels import RecallContext
from services.recall.merge import ChannelBudget, ChannelMetrics, Merger

CONTEXT = RecallContext(1, np.array([], np.int64), 0, True)


class Fixed:
    """A channel with a fixed answer; optionally slow or broken."""

    def __init__(self, name: str, ids, sleep_s: float = 0.0, broken: bool = False):
        self.name, self.ids = name, np.array(ids, dtype=np.int64)
        self.sleep_s, self.broken = sleep_s, broken
        self.asked: list[int] = []
        self.release = threading.Event()

    def retrieve(self, context, k):
        self.asked.append(k)
        if self.broken:
            raise RuntimeError("index went away")
        if self.sleep_s:
            self.release.wait(self.sleep_s)
        ids = self.ids[:k]
        return ids, np.linspace(1, 0, len(ids)).astype(np.float32)


def merger(channels, quotas, budget_ms=500.0, **kwargs) -> Merger:
    budgets = {
        c.name: ChannelBudget(quota=q, budget_ms=budget_ms)
        for c, q in zip(channels, quotas, strict=True)
    }
    return Merger(channels, budgets, **kwargs)


def test_quotas_then_fill_from_what_is_left():
    item_cf = Fixed("item_cf", range(100, 120))
    popular = Fixed("popular", range(200, 220))
    result = merger([item_cf, popular], [0.5, 0.2]).recall(CONTEXT, 10, np.empty(0, np.int64))
    ids = result.candidates.item_ids
    assert len(ids) == 10
    # First pass: item_cf 5, popular 2; the gap (3) is filled in priority order: item_cf again.
    assert sorted(ids.tolist()) == [*range(100, 108), 200, 201]
    assert [r.kept for r in result.reports] == [8, 2]
    # Asked for quota x overfetch (1.5); the fallback for the whole count.
    assert item_cf.asked == [8] and popular.asked == [10]
    assert [r.returned for r in result.reports] == [8, 10]
    assert np.all(np.diff(result.candidates.scores) < 0)


def test_unknown_user_falls_back_to_popular():
    personal = Fixed("item_cf", [])
    popular = Fixed("popular", range(1, 50))
    result = merger([personal, popular], [0.8, 0.2]).recall(CONTEXT, 20, np.empty(0, np.int64))
    assert result.candidates.item_ids.tolist() == list(range(1, 21))
    assert [r.status for r in result.reports] == ["empty", "ok"]
    assert popular.asked == [20]  # the fallback is asked for the whole count


def test_duplicates_removed_keeping_every_channel_tag():
    two_tower = Fixed("two_tower", [1, 2, 3])
    item_cf = Fixed("item_cf", [3, 4, 1])
    fresh = Fixed("fresh", [9, 1])
    result = merger([two_tower, item_cf, fresh], [0.5, 0.3, 0.2]).recall(CONTEXT, 10, np.empty(0))
    ids, masks = result.candidates.item_ids, result.candidates.channel_masks
    assert sorted(ids.tolist()) == [1, 2, 3, 4, 9] and len(set(ids.tolist())) == len(ids)
    tags = {int(i): channels_of(m) for i, m in zip(ids, masks, strict=True)}
    assert tags[1] == ["two_tower", "item_cf", "fresh"]
    assert tags[3] == ["two_tower", "item_cf"]
    assert tags[9] == ["fresh"]
    assert masks[ids.tolist().index(4)] == channel_bit("item_cf")


def test_each_candidate_carries_its_best_position_in_the_channels_answers():
    """1-based, consumed items left out before counting: the rank the ranker reads."""
    two_tower = Fixed("two_tower", [7, 1, 2, 3])
    item_cf = Fixed("item_cf", [3, 4, 1])
    popular = Fixed("popular", [5, 6, 2])
    result = merger([two_tower, item_cf, popular], [0.5, 0.3, 0.2]).recall(
        CONTEXT, 10, np.array([7])
    )
    ids, positions = result.candidates.item_ids, result.candidates.channel_positions
    best = dict(zip(ids.tolist(), positions.tolist(), strict=True))
    # two_tower without consumed 7: 1, 2, 3 at 1, 2, 3; item_cf: 3, 4, 1 at 1, 2, 3; popular
    # 5, 6, 2 at 1, 2, 3.
    assert best == {1: 1, 2: 2, 3: 1, 4: 2, 5: 1, 6: 2}
    assert positions.dtype == np.uint32


def test_consumed_items_are_filtered_and_order_is_stable():
    two_tower = Fixed("two_tower", [5, 6, 7, 8])
    popular = Fixed("popular", [6, 1, 2, 3])
    m = merger([two_tower, popular], [0.5, 0.5])
    first = m.recall(CONTEXT, 6, np.array([6, 2]))
    ids = first.candidates.item_ids
    assert not set(ids.tolist()) & {6, 2}
    # Channels interleave in proportion to their quotas, each in its own order.
    assert ids.tolist() == [5, 1, 7, 3, 8]
    again = m.recall(CONTEXT, 6, np.array([6, 2]))
    assert np.array_equal(again.candidates.item_ids, ids)
    assert np.array_equal(again.candidates.channel_masks, first.candidates.channel_masks)


@pytest.mark.timeout(60)
def test_slow_and_failing_channels_are_skipped_and_counted():
    # The slow channel waits until released (30 s at most): it can only be cut by its 0.3 s
    # budget. The others answer at once and get 5 s, so a busy machine cannot make them late.
    slow = Fixed("two_tower", [1, 2, 3], sleep_s=30.0)
    broken = Fixed("social", [4], broken=True)
    popular = Fixed("popular", [10, 11, 12])
    registry = CollectorRegistry()
    budgets = {
        "two_tower": ChannelBudget(quota=0.4, budget_ms=300.0),
        "social": ChannelBudget(quota=0.3, budget_ms=5_000.0),
        "popular": ChannelBudget(quota=0.3, budget_ms=5_000.0),
    }
    m = Merger([slow, broken, popular], budgets, metrics=ChannelMetrics(registry))
    started = time.perf_counter()
    result = m.recall(CONTEXT, 3, np.empty(0, np.int64))
    elapsed = time.perf_counter() - started
    slow.release.set()
    m.close()
    assert elapsed < 10.0  # bounded by the budgets, not the slow channel's 30 s
    assert result.candidates.item_ids.tolist() == [10, 11, 12]
    assert [r.status for r in result.reports] == ["timeout", "error", "ok"]

    def value(name: str, channel: str) -> float:
        return registry.get_sample_value(name, {"channel": channel})

    assert value("cascade_recall_channel_timeouts_total", "two_tower") == 1
    assert value("cascade_recall_channel_errors_total", "social") == 1
    assert value("cascade_recall_channel_candidates_total", "popular") == 3
    assert value("cascade_recall_channel_kept_total", "popular") == 3
    assert value("cascade_recall_channel_kept_total", "two_tower") == 0
    assert value("cascade_recall_channel_latency_seconds_count", "popular") == 1


def test_request_deadline_caps_every_budget():
    slow = Fixed("item_cf", [1], sleep_s=30.0)
    m = merger([slow], [1.0], budget_ms=60_000.0)
    started = time.perf_counter()
    result = m.recall(CONTEXT, 5, np.empty(0, np.int64), deadline=started + 0.05)
    slow.release.set()
    assert time.perf_counter() - started < 10.0  # the deadline, not the 60 s budget
    assert result.reports[0].status == "timeout" and len(result.candidates.item_ids) == 0


def test_inline_channels_merge_exactly_as_threaded_ones():
    def channels():
        return [
            Fixed("two_tower", [5, 1, 2, 9]),
            Fixed("item_cf", [2, 3, 5]),
            Fixed("popular", [1, 3, 7, 8, 9]),
        ]

    consumed = np.array([7])
    threaded = merger(channels(), [0.4, 0.3, 0.3]).recall(CONTEXT, 6, consumed)
    inline = merger(channels(), [0.4, 0.3, 0.3], max_workers=0).recall(CONTEXT, 6, consumed)
    for got, want in zip(inline.candidates, threaded.candidates, strict=True):
        assert np.array_equal(got, want)
    assert [r.kept for r in inline.reports] == [r.kept for r in threaded.reports]


def test_inline_channels_skip_what_their_budget_no_longer_allows():
    slow = Fixed("two_tower", [1, 2, 3], sleep_s=0.2)  # runs to the end: it cannot be cut off
    broken = Fixed("social", [4], broken=True)
    late = Fixed("popular", [10, 11, 12])
    # Generous budgets for the first two (a busy machine cannot skip them); the last one's
    # 50 ms are surely over once the slow channel has taken its 0.2 s.
    budgets = {
        "social": ChannelBudget(quota=0.3, budget_ms=10_000.0),
        "two_tower": ChannelBudget(quota=0.4, budget_ms=10_000.0),
        "popular": ChannelBudget(quota=0.3, budget_ms=50.0),
    }
    m = Merger([broken, slow, late], budgets, max_workers=0)
    result = m.recall(CONTEXT, 3, np.empty(0, np.int64))
    assert [r.status for r in result.reports] == ["error", "ok", "timeout"]
    assert late.asked == [] and result.candidates.item_ids.tolist() == [1, 2]
