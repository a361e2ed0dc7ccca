"""The event log: append, reopen, a torn tail at every byte offset, dedup, read back with pyarrow;
the same contract on the embedded files and on a real redis-server."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from cascade.backends import open_event_log
from cascade.eventlog import (
    EVENTS,
    HEADER,
    IMPRESSIONS,
    EventLogError,
    FileEventLog,
    LogSettings,
    conform,
    encode_frame,
    read_frames,
)
from cascade.live_catalog import FOLLOWS


def events(n: int, start: int = 0, request_id: str = "r") -> pa.Table:
    rows = range(start, start + n)
    return pa.table(
        {
            "user_id": [1 + i % 3 for i in rows],
            "user_key": [str(1 + i % 3) for i in rows],
            "item_id": [10 + i for i in rows],
            "event": ["play" if i % 2 else "like" for i in rows],
            "timestamp_ms": [1_000 + i for i in rows],
            "request_id": [f"{request_id}{i}" for i in rows],
            "logged_ms": [2_000 + i for i in rows],
        },
        schema=EVENTS,
    )


def impression(request_id: str = "q1") -> pa.Table:
    return pa.table(
        {
            "request_id": [request_id],
            "user_id": [7],
            "user_key": ["7"],
            "request_time_ms": [123],
            "arm": [""],
            "item_ids": [[5, 3, 9]],
            "positions": [[0, 1, 2]],
            "recall_scores": [[0.5, 0.4, 0.3]],
            "prerank_scores": [[]],
            "rank_scores": [[0.9, 0.8, 0.1]],
            "rerank_scores": [[3.0, 2.0, 1.0]],
            "channel_masks": [[2, 4, 2]],
            "model_versions": [json.dumps({"rank": "v1"})],
            "degraded_stages": [["prerank"]],
            "explored": [[False, False, True]],
        },
        schema=IMPRESSIONS,
    )


@pytest.fixture(params=["file", "redis", "redis-cluster"])
def log_uri(request, tmp_path) -> str:
    if request.param == "file":
        return f"file:{tmp_path / 'log'}"
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


def test_append_read_back_in_order_and_reopen(log_uri):
    log = open_event_log(log_uri)
    assert log.append_events(events(3)) == 3
    assert log.append_events(events(2, start=3)) == 2
    log.append_impressions(impression("a"))
    log.append_impressions(impression("b"))
    log.close()
    log = open_event_log(log_uri)  # a restart
    read = log.read_events()
    assert read.schema == EVENTS
    assert read["item_id"].to_pylist() == [10, 11, 12, 13, 14]
    assert read.equals(pa.concat_tables([events(3), events(2, start=3)]))
    shown = log.read_impressions()
    assert shown["request_id"].to_pylist() == ["a", "b"]
    assert shown["item_ids"].to_pylist() == [[5, 3, 9]] * 2
    assert shown["prerank_scores"].to_pylist() == [[], []]
    log.close()


def test_impressions_without_the_explored_column_read_back_as_null(log_uri):
    """A writer that leaves out `explored` (added after logs existed) still appends, and frames
    from before it existed read back beside new ones with a null there (none explored)."""
    log = open_event_log(log_uri)
    log.append_impressions(impression("old").drop_columns(["explored"]))
    log.append_impressions(impression("new"))
    if log_uri.startswith("file:"):  # a frame written with the schema of before
        segments = log._kinds["impressions"]
        with segments.lock:
            segments.append(impression("older").drop_columns(["explored"]))
    shown = log.read_impressions()
    assert shown.schema.equals(IMPRESSIONS)
    flags = dict(zip(shown["request_id"].to_pylist(), shown["explored"].to_pylist(), strict=True))
    assert flags["old"] is None and flags["new"] == [False, False, True]
    assert flags.get("older", None) is None
    log.close()


def test_a_repeat_is_recorded_once_also_after_reopen(log_uri):
    log = open_event_log(log_uri)
    assert log.append_events(events(3)) == 3
    batch = pa.concat_tables([events(1, start=2), events(1, start=3), events(1, start=3)])
    fresh = log.append_new_events(batch)  # item 12 again, 13 new, 13 twice in one batch
    assert fresh["item_id"].to_pylist() == [13]
    log.close()
    log = open_event_log(log_uri)
    assert log.append_events(events(4)) == 0  # the window came back from the log
    # Same item and time but another request (or event type): a different event.
    assert log.append_events(events(1, request_id="other")) == 1
    assert len(log.read_events()) == 5
    log.close()


def test_bad_rows_are_refused_before_anything_is_written(log_uri):
    log = open_event_log(log_uri)
    bad = events(2).set_column(3, "event", pa.array(["play", "teleport"]))
    with pytest.raises(ValueError, match="teleport"):
        log.append_events(bad)
    with pytest.raises(ValueError, match="missing columns"):
        log.append_events(events(1).drop_columns(["user_key"]))
    assert len(log.read_events()) == 0
    log.close()


def test_torn_tail_at_every_offset_is_skipped_on_reopen(tmp_path):
    """A crash can leave any prefix of the last frame: every one reopens without error, with the
    whole frames intact, and the log appends after them."""
    folder = tmp_path / "log"
    log = FileEventLog(folder)
    log.append_events(events(2))
    log.close()
    segment = next((folder / "events").glob("*.seg"))
    good = segment.read_bytes()
    log = FileEventLog(folder)
    log.append_events(events(3, start=2))
    log.close()
    whole = segment.read_bytes()
    assert len(whole) > len(good) + HEADER.size
    for cut in range(len(good), len(whole)):
        segment.write_bytes(whole[:cut])
        log = FileEventLog(folder)
        assert log.read_events()["item_id"].to_pylist() == [10, 11], cut
        assert segment.stat().st_size == len(good)  # the torn bytes are gone
        log.close()
    # A flipped byte inside the last frame's payload fails its checksum: skipped too.
    damaged = bytearray(whole)
    damaged[-5] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    log = FileEventLog(folder)
    assert len(log.read_events()) == 2
    assert log.append_events(events(1, start=7)) == 1
    log.close()
    assert FileEventLog(folder).read_events()["item_id"].to_pylist() == [10, 11, 17]


def test_segments_roll_by_size_and_read_with_pyarrow_alone(tmp_path):
    folder = tmp_path / "log"
    log = FileEventLog(folder, LogSettings(segment_bytes=1))  # every append seals a segment
    for start in range(0, 6, 2):
        log.append_events(events(2, start=start))
    log.close()
    paths = sorted((folder / "events").glob("*.seg"))
    assert [p.name for p in paths] == ["00000001.seg", "00000002.seg", "00000003.seg"]
    # What docs/state.md shows: frames are 12-byte headers + an Arrow IPC stream each.
    tables = []
    for path in paths:
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length = int.from_bytes(data[offset + 4 : offset + 8], "little")
            stream = data[offset + 12 : offset + 12 + length]
            tables.append(pa.ipc.open_stream(stream).read_all())
            offset += 12 + length
    assert pa.concat_tables(tables)["item_id"].to_pylist() == list(range(10, 16))
    assert read_frames(paths[0])[1] == paths[0].stat().st_size


def test_dedup_window_is_bounded(tmp_path):
    log = FileEventLog(tmp_path / "log", LogSettings(dedup_window=3))
    assert log.append_events(events(5)) == 5
    assert log.append_events(events(1, start=4)) == 0  # inside the window
    assert log.append_events(events(1, start=0)) == 1  # fell out of it: logged again
    log.close()


def test_fsync_policy_is_checked():
    with pytest.raises(ValueError, match="fsync"):
        LogSettings(fsync="sometimes")
    with pytest.raises(ValueError, match="impressions_fsync"):
        LogSettings(impressions_fsync="rarely")


def test_events_fsync_every_append_while_impressions_fsync_on_their_interval(tmp_path, monkeypatch):
    """The defaults: an acknowledged Feedback event is on disk before the append returns; the
    impression log (acknowledged to no one) syncs at most once per interval."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    log = FileEventLog(tmp_path / "log", LogSettings(fsync_interval_s=60.0))
    assert (log.settings.fsync, log.settings.impressions_fsync) == ("always", "interval")
    log.append_impressions(impression("a"))
    opened = len(synced)  # the new segment's directory entry is synced once
    for name in ("b", "c", "d"):
        log.append_impressions(impression(name))
    assert len(synced) == opened  # no fsync per impression frame
    log.append_events(events(1))
    before = len(synced)
    log.append_events(events(1, start=1))
    assert len(synced) == before + 1  # one per events frame
    follow = {"follower_id": [1], "followee_id": [2], "unfollow": [False]}
    follow |= {"timestamp_ms": [5], "logged_ms": [5]}
    log.append_records("follows", pa.Table.from_pydict(follow, FOLLOWS))  # acknowledged too
    before = len(synced)
    log.append_records("follows", pa.Table.from_pydict(follow, FOLLOWS))
    assert len(synced) == before + 1
    log.close()  # closing syncs what the interval had not
    reader = FileEventLog(tmp_path / "log", read_only=True)
    assert reader.read_impressions()["request_id"].to_pylist() == ["a", "b", "c", "d"]


def test_a_table_built_to_the_schema_is_appended_as_it_is():
    table = impression()
    assert conform(table, IMPRESSIONS) is table  # no select, no cast
    reordered = table.select(list(reversed(table.column_names)))
    assert conform(reordered, IMPRESSIONS).schema.equals(IMPRESSIONS)


def test_redis_log_survives_kill_9_of_redis(redis_process):
    log = open_event_log(redis_process.url)
    assert log.append_events(events(4)) == 4
    log.close()
    redis_process.kill()
    redis_process.restart()  # same port and AOF file
    log = open_event_log(redis_process.url)
    assert log.read_events()["item_id"].to_pylist() == [10, 11, 12, 13]
    assert log.append_events(events(4)) == 0  # dedup keys were persisted too
    log.close()


def test_one_writer_per_folder_and_readers_beside_it(tmp_path):
    writer = FileEventLog(tmp_path / "log")
    with pytest.raises(EventLogError, match="another process"):
        FileEventLog(tmp_path / "log")
    writer.append_events(events(2))
    segment = next((tmp_path / "log" / "events").glob("*.seg"))
    with open(segment, "ab") as f:  # a frame the writer is half-way through
        f.write(encode_frame(events(1, start=2))[:20])
    reader = open_event_log(f"file:{tmp_path / 'log'}", read_only=True)
    size = segment.stat().st_size
    assert reader.read_events()["item_id"].to_pylist() == [10, 11]
    assert segment.stat().st_size == size  # a reader never cuts what the writer is writing
    with pytest.raises(EventLogError, match="read-only"):
        reader.append_events(events(1))
    writer.close()
    FileEventLog(tmp_path / "log").close()  # the lock went with the writer


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_hands_each_append_to_the_os_before_returning(tmp_path, policy):
    """What a killed process leaves: every policy has written the frame when append returns
    (a reader sees it while the writer still runs); the policies differ in fsync only."""
    writer = FileEventLog(tmp_path / "log", LogSettings(fsync=policy, fsync_interval_s=60.0))
    writer.append_events(events(2))
    writer.append_impressions(impression())
    reader = FileEventLog(tmp_path / "log", read_only=True)
    assert len(reader.read_events()) == 2 and len(reader.read_impressions()) == 1
    writer.close()


def test_read_since_returns_only_what_follows_a_position(log_uri):
    """A position is plain JSON; what was appended before it never comes back, what was
    appended after the read comes with the next one, and an unchanged log reads nothing."""
    log = open_event_log(log_uri)
    log.append_events(events(3))
    log.append_impressions(impression("a"))
    first, position = log.read_since("events", None)
    assert first["item_id"].to_pylist() == [10, 11, 12]
    position = json.loads(json.dumps(position))  # as a bundle's manifest carries it
    log.append_events(events(2, start=3))
    reader = open_event_log(log_uri, read_only=True)  # beside the writer, as the retrain reads
    later, after = reader.read_since("events", position)
    assert later.schema == EVENTS and later["item_id"].to_pylist() == [13, 14]
    nothing, same = reader.read_since("events", after)
    assert nothing.num_rows == 0 and same == after
    shown, _ = reader.read_since("impressions", None)
    assert shown["request_id"].to_pylist() == ["a"]
    uploads, empty = reader.read_since("uploads", None)
    assert uploads.num_rows == 0 and reader.read_since("uploads", empty)[0].num_rows == 0
    with pytest.raises(ValueError, match="record kind"):
        reader.read_since("clicks", None)
    name = reader.log_id()
    assert name == log.log_id() != ""
    reader.close()
    log.close()
    log = open_event_log(log_uri)  # a restart keeps the log's name and its positions
    log.append_events(events(1, start=5))
    assert log.read_since("events", after)[0]["item_id"].to_pylist() == [15]
    assert log.log_id() == name
    log.close()


def test_file_positions_survive_sealed_segments_and_a_torn_last_frame(tmp_path):
    folder = tmp_path / "log"
    log = FileEventLog(folder, LogSettings(segment_bytes=1))  # every append seals a segment
    log.append_events(events(2))
    _, position = log.read_since("events", None)
    assert position == {"segment": 1, "offset": (folder / "events/00000001.seg").stat().st_size}
    log.append_events(events(2, start=2))
    log.append_events(events(2, start=4))
    log.close()
    # The writer died inside its next frame: a reader stops before it, and reads it once whole.
    last = folder / "events" / "00000003.seg"
    whole = last.read_bytes()
    frame = encode_frame(events(1, start=6))
    last.write_bytes(whole + frame[: len(frame) // 2])
    reader = FileEventLog(folder, read_only=True)
    read, after = reader.read_since("events", position)
    assert read["item_id"].to_pylist() == [12, 13, 14, 15]  # the segments sealed since
    assert after == {"segment": 3, "offset": len(whole)}  # the torn frame's first byte
    assert reader.read_since("events", after)[0].num_rows == 0
    last.write_bytes(whole + frame)  # the frame completed
    assert reader.read_since("events", after)[0]["item_id"].to_pylist() == [16]
    last.write_bytes(whole + frame[:7])  # torn again: the writer cuts it on reopen ...
    log = FileEventLog(folder)
    log.append_events(events(1, start=7))  # ... and its next frame starts at the position
    assert reader.read_since("events", after)[0]["item_id"].to_pylist() == [17]
    log.close()
    gone = {"segment": 9, "offset": 0}
    with pytest.raises(EventLogError, match="segment 9"):
        reader.read_since("events", gone)
    with pytest.raises(EventLogError, match="shorter than the position"):
        reader.read_since("events", {"segment": 3, "offset": 10**9})
    reader.close()


def test_redis_positions_are_stream_ids_past_the_entries_read(redis_url):
    from cascade.eventlog_redis import READ_CHUNK, RedisEventLog

    log = RedisEventLog(redis_url)
    log.append_events(events(4))
    _, position = log.read_since("events", None)
    ids = [entry_id.decode() for entry_id, _ in log.client.xrange(log.streams["events"])]
    assert position == {"id": ids[-1]}
    log.append_events(events(3, start=4))
    read, after = log.read_since("events", position)
    assert read["item_id"].to_pylist() == [14, 15, 16]
    assert after != position and log.read_since("events", after)[0].num_rows == 0
    # Past one XRANGE chunk: every later entry once, none before the position.
    many = READ_CHUNK + 5
    log.append_events(events(many, start=100, request_id="bulk"))
    bulk, _ = log.read_since("events", after)
    assert bulk["item_id"].to_pylist() == list(range(110, 110 + many))
    log.close()
