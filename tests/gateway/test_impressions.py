"""The impression writer batches answers into frames: what arrives within `linger_s` of an answer
shares its frame, and flushing or closing writes what is queued at once."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from cascade.candidates import to_proto
from cascade.eventlog import FileEventLog, LogSettings, read_frames
from gateway.impressions import ImpressionWriter, Shown
from gateway.pipeline import GatewayMetrics, Served


def shown(request_id: str) -> Shown:
    served = Served(versions={"rank": "v1"})
    served.lists["rank"] = to_proto([4, 8, 15], [0.9, 0.5, 0.1], [2, 2, 4])
    served.lists["rerank"] = to_proto([8, 4], [2.0, 1.0], [2, 2])
    return Shown(request_id, 3, "3", 1_000, [8, 4], [2, 2], ["prerank"], served, shown_ms=1_000)


def frames(folder) -> list[int]:
    """Rows per frame of the impression segments, in order."""
    return [
        table.num_rows
        for path in sorted((folder / "impressions").glob("*.seg"))
        for table in read_frames(path)[0]
    ]


def test_answers_within_the_linger_share_one_frame_and_close_does_not_wait(tmp_path):
    log = FileEventLog(tmp_path / "log", LogSettings())
    writer = ImpressionWriter(log, GatewayMetrics(CollectorRegistry()), linger_s=30.0)
    for name in ("a", "b", "c"):
        writer.submit(shown(name))
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5.0  # not the 30 s linger
    assert frames(tmp_path / "log") == [3]
    rows = log.read_impressions().to_pylist()
    assert [r["request_id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["rank_scores"] == [0.5, 0.8999999761581421]  # display order: items 8, 4
    assert rows[0]["prerank_scores"] == []  # degraded: no scores
    log.close()


def test_flush_writes_what_is_queued_at_once_and_the_writer_goes_on(tmp_path):
    log = FileEventLog(tmp_path / "log", LogSettings())
    registry = CollectorRegistry()
    writer = ImpressionWriter(log, GatewayMetrics(registry), linger_s=30.0)
    for name in ("a", "b"):
        writer.submit(shown(name))
    assert registry.get_sample_value("cascade_gateway_impressions_pending") == 2
    started = time.monotonic()
    assert writer.flush()
    assert time.monotonic() - started < 5.0  # not the 30 s linger
    assert frames(tmp_path / "log") == [2]
    assert registry.get_sample_value("cascade_gateway_impressions_pending") == 0
    writer.submit(shown("c"))
    assert writer.flush()
    assert frames(tmp_path / "log") == [2, 1]
    assert writer.flush()  # nothing queued: returns at once, writes nothing
    assert frames(tmp_path / "log") == [2, 1]
    writer.close()
    assert not writer.flush(timeout_s=0.1)  # a closed writer never writes again
    rows = log.read_impressions().to_pylist()
    assert [r["request_id"] for r in rows] == ["a", "b", "c"]
    log.close()


def test_without_a_linger_each_answer_is_written_when_the_writer_is_free(tmp_path):
    log = FileEventLog(tmp_path / "log", LogSettings())
    writer = ImpressionWriter(log, GatewayMetrics(CollectorRegistry()), linger_s=0.0)
    writer.submit(shown("a"))
    deadline = time.monotonic() + 10
    while not frames(tmp_path / "log") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert frames(tmp_path / "log") == [1]  # written without waiting for a second answer
    writer.close()
    log.close()
