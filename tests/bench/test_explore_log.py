"""bench.explore_log: explored slots, the uploads they showed and those uploads' plays, per arm,
counted from a real event log."""

from __future__ import annotations

import pyarrow as pa

from bench.explore_log import measure
from cascade.backends import open_event_log
from cascade.eventlog import EVENTS, IMPRESSIONS
from cascade.live_catalog import UPLOADS


def page(request_id: str, arm: str, items: list[int], explored: list[bool] | None) -> dict:
    n = len(items)
    return {
        "request_id": request_id,
        "user_id": 1,
        "user_key": "1",
        "request_time_ms": 1000,
        "arm": arm,
        "item_ids": items,
        "positions": list(range(n)),
        **{f"{s}_scores": [] for s in ("recall", "prerank", "rank", "rerank")},
        "channel_masks": [0] * n,
        "model_versions": "{}",
        "degraded_stages": [],
        "explored": explored,
    }


def test_explored_uploads_and_their_plays_are_counted_per_arm(tmp_path):
    log = open_event_log(f"file:{tmp_path / 'eventlog'}")
    log.append_records(
        "uploads",
        pa.table(
            {
                "item_id": [100, 101],
                "item_key": ["a", "b"],
                "creator_id": [1, 1],
                "categories": [[1], [2]],
                "upload_ms": [500, 600],
                "logged_ms": [500, 600],
                "content": [[], []],
            },
            schema=UPLOADS,
        ),
    )
    pages = [
        page("r1", "explore", [5, 6, 100], [False, False, True]),
        page("r2", "explore", [7, 99, 101], [False, True, True]),  # 99: a recent catalogue item
        page("r3", "cascade", [101, 8, 9], None),  # an old record: nothing explored
    ]
    log.append_impressions(pa.Table.from_pylist(pages, schema=IMPRESSIONS))
    events = [
        ("r1", 100, "play"),
        ("r1", 100, "complete"),
        ("r2", 101, "play"),
        ("r3", 101, "play"),
    ]
    log.append_events(
        pa.table(
            {
                "user_id": [1] * 4,
                "user_key": ["1"] * 4,
                "item_id": [item for _, item, _ in events],
                "event": [name for _, _, name in events],
                "timestamp_ms": [2000, 2001, 2002, 2003],
                "request_id": [r for r, _, _ in events],
                "logged_ms": [2000] * 4,
            },
            schema=EVENTS,
        )
    )
    log.close()
    report = measure(tmp_path)
    assert report["uploads"] == 2
    explore, cascade = report["arms"]["explore"], report["arms"]["cascade"]
    assert (explore["pages"], explore["explored"], explore["explored_uploads"]) == (2, 3, 2)
    assert (explore["upload_plays"], explore["upload_completes"], explore["uploads_played"]) == (
        2,
        1,
        2,
    )
    assert (cascade["explored"], cascade["organic_uploads"], cascade["upload_plays"]) == (0, 1, 1)
