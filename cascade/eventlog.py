"""The event log, the source of truth: every acknowledged Feedback event and every served answer.

Two record kinds with fixed Arrow schemas (EVENTS, IMPRESSIONS; docs/state.md).
`file:DIR` (FileEventLog) is the embedded default: segmented append-only files, one frame per
append (length + CRC32 + an Arrow IPC stream), fsync per append by default, a torn tail skipped
on reopen. `redis://HOST:PORT/DB` logs to Redis Streams (cascade/eventlog_redis.py), so several
gateways log to one place; cascade.backends.open_event_log picks one from the URL. A repeated
event (same user, request_id, item, event and timestamp_ms) is recorded once.

A reader can continue where it stopped: `read_since(kind, position)` returns what follows a
position and the position after it, plain JSON (a trainer records it in the bundle it publishes).
On files a position is the segment and the byte offset of the next frame; on Redis the last
stream entry id read. `log_id()` names the log, so a position is never applied to another log.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from cascade.feature_store import EVENTS as EVENT_NAMES
from cascade.live_catalog import FOLLOWS, UPLOADS

log = logging.getLogger(__name__)

EVENTS = pa.schema(
    [
        ("user_id", pa.int64()),  # dense id the stages see
        ("user_key", pa.string()),  # the platform's own id (cascade.ids.external_key)
        ("item_id", pa.int64()),
        ("event", pa.string()),  # one of cascade.feature_store.EVENTS
        ("timestamp_ms", pa.int64()),  # when it happened (the gateway's time if the client sent 0)
        ("request_id", pa.string()),  # the Recommend answer that showed the item ("" = none)
        ("logged_ms", pa.int64()),  # when the gateway appended it
    ]
)
SCORE_COLUMNS = ("recall_scores", "prerank_scores", "rank_scores", "rerank_scores")
IMPRESSIONS = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.int64()),  # 0 = served as anonymous
        ("user_key", pa.string()),
        ("request_time_ms", pa.int64()),
        ("arm", pa.string()),
        ("item_ids", pa.list_(pa.int64())),  # display order
        ("positions", pa.list_(pa.int32())),  # 0-based, parallel to item_ids
        *[(name, pa.list_(pa.float32())) for name in SCORE_COLUMNS],  # [] = stage did not run
        ("channel_masks", pa.list_(pa.uint32())),
        ("model_versions", pa.string()),  # JSON object, stage -> version
        ("degraded_stages", pa.list_(pa.string())),
        # Parallel to item_ids: True where the traffic pool put a young upload (gateway/pool.py),
        # not the ranking; null in records written before the column existed (none explored).
        ("explored", pa.list_(pa.bool_())),
    ]
)
# Columns a writer may leave out (conform fills them with nulls): added after logs existed.
OPTIONAL = frozenset({"explored"})
# The living catalogue (cascade/live_catalog.py): uploads and follow changes, in arrival order.
SCHEMAS = {"events": EVENTS, "impressions": IMPRESSIONS, "uploads": UPLOADS, "follows": FOLLOWS}
RECORDS = ("uploads", "follows")  # the kinds append_records / read_records take
FSYNC_POLICIES = ("always", "interval", "never")


# Where a reader of one record kind stopped (JSON): {"segment": N, "offset": BYTES} on files,
# {"id": "MS-SEQ"} on Redis; None reads from the start.
Position = dict[str, Any]


class EventLogError(RuntimeError):
    """The log could not take a write (disk full, Redis down, ...): nothing was acknowledged."""


class EventLog(Protocol):
    def append_events(self, table: pa.Table) -> int: ...
    def append_new_events(self, table: pa.Table) -> pa.Table: ...
    def append_impressions(self, table: pa.Table) -> None: ...
    def read_events(self) -> pa.Table: ...
    def read_impressions(self) -> pa.Table: ...
    def append_records(self, kind: str, table: pa.Table) -> None: ...
    def read_records(self, kind: str) -> pa.Table: ...
    def read_since(self, kind: str, position: Position | None) -> tuple[pa.Table, Position]: ...
    def log_id(self) -> str: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LogSettings:
    fsync: str = "always"  # always | interval | never (docs/state.md: what each can lose)
    # Impression records are acknowledged to no one (the answer went out before they were
    # queued, and a killed gateway loses its queue anyway): an fsync per frame buys nothing a
    # caller relies on and costs the gateway a disk flush, and its CPU, per frame.
    impressions_fsync: str = "interval"
    fsync_interval_s: float = 1.0  # "interval": at most this long between fsyncs
    segment_bytes: int = 64 * 1024 * 1024  # a segment is sealed past this size ...
    segment_seconds: float = 3600.0  # ... or this age
    dedup_window: int = 200_000  # the last N events' keys are remembered for dedup
    maxlen: int = 10_000_000  # Redis: entries kept per stream (approximate trimming)
    dedup_ttl_s: int = 86_400  # Redis: how long an event's dedup key lives

    def __post_init__(self) -> None:
        for name in ("fsync", "impressions_fsync"):
            if getattr(self, name) not in FSYNC_POLICIES:
                raise ValueError(
                    f"{name} must be one of {FSYNC_POLICIES}, got {getattr(self, name)!r}"
                )
        if min(self.segment_bytes, self.dedup_window, self.maxlen, self.dedup_ttl_s) < 1:
            raise ValueError("segment_bytes, dedup_window, maxlen and dedup_ttl_s must be >= 1")

    def for_impressions(self) -> LogSettings:
        """The settings the impression segments run on: their own fsync policy."""
        return dataclasses.replace(self, fsync=self.impressions_fsync)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns and types (ValueError naming what is wrong)."""
    if table.schema.equals(schema):  # built to the schema already: no select, no cast
        return table
    missing = [name for name in schema.names if name not in table.column_names]
    for name in [name for name in missing if name in OPTIONAL]:
        table = table.append_column(
            schema.field(name), pa.nulls(table.num_rows, schema.field(name).type)
        )
        missing.remove(name)
    if missing:
        raise ValueError(f"missing columns {missing}; the schema is {schema.names}")
    table = table.select(schema.names)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"columns do not fit the schema: {error}") from None


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Frames read back as one table of `schema` (frames from before an OPTIONAL column was
    added hold nulls in it)."""
    if not tables:
        return schema.empty_table()
    if all(t.schema.equals(schema) for t in tables):
        return pa.concat_tables(tables)
    return pa.Table.from_batches(
        [b for t in tables for b in conform(t, schema).to_batches()], schema=schema
    )


def event_keys(table: pa.Table) -> list[tuple]:
    """The dedup key of each event row."""
    columns = [table[c].to_pylist() for c in ("user_key", "request_id", "item_id", "event")]
    return list(zip(*columns, table["timestamp_ms"].to_pylist(), strict=True))


def check_event_names(table: pa.Table) -> None:
    unknown = sorted(set(table["event"].to_pylist()) - set(EVENT_NAMES))
    if unknown:
        raise ValueError(f"unknown event names {unknown}; expected one of {EVENT_NAMES}")


def check_kind(kind: str) -> str:
    if kind not in SCHEMAS:
        raise ValueError(f"record kind {kind!r}: expected one of {tuple(SCHEMAS)}")
    return kind


def check_record_kind(kind: str) -> str:
    if kind not in RECORDS:
        raise ValueError(f"record kind {kind!r}: expected one of {RECORDS}")
    return kind


class DedupWindow:
    """The keys of the last `size` events, in a set plus a FIFO (memory bounded by `size`)."""

    def __init__(self, size: int):
        self.size = size
        self._keys: set[int] = set()
        self._order: deque[int] = deque()

    def new(self, keys: list[tuple]) -> np.ndarray:
        """Which of `keys` were not seen (the first of repeats within `keys` counts as new)."""
        hashes = [hash(k) for k in keys]  # 64-bit: a false repeat is ~1e-8 per 200k window
        out, batch = np.zeros(len(keys), dtype=bool), set()
        for i, h in enumerate(hashes):
            out[i] = h not in self._keys and h not in batch
            batch.add(h)
        return out

    def add(self, keys: list[tuple]) -> None:
        for key in keys:
            h = hash(key)
            if h in self._keys:
                continue
            self._keys.add(h)
            self._order.append(h)
            if len(self._order) > self.size:
                self._keys.discard(self._order.popleft())


# -- embedded: segmented framed Arrow IPC ----------------------------------------------------
MAGIC = b"CEL1"
HEADER = struct.Struct("<4sII")  # magic, payload length, CRC32 of the payload
SUFFIX = ".seg"
LOG_ID = "LOG_ID"


def encode_frame(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_frames(path: Path, first: int = 0) -> tuple[list[pa.Table], int]:
    """The whole frames of a segment from byte `first` (a frame's first byte) and the byte offset
    where the valid part ends (a torn or damaged frame and everything after it are skipped)."""
    with open(path, "rb") as f:
        f.seek(first)
        data = f.read()
    tables, offset = [], 0
    while offset + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, offset)
        start, end = offset + HEADER.size, offset + HEADER.size + length
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            tables.append(pa.ipc.open_stream(data[start:end]).read_all())
        except pa.ArrowInvalid:
            break
        offset = end
    return tables, first + offset


class _Segments:
    """One record kind's segment files in `folder`: 00000001.seg, 00000002.seg, ..."""

    def __init__(self, folder: Path, schema: pa.Schema, settings: LogSettings, writer: bool):
        self.folder, self.schema, self.settings = folder, schema, settings
        self.lock = threading.Lock()
        self._file = None
        self._opened_at = 0.0
        self._synced_at = time.monotonic()
        if not writer:
            return
        folder.mkdir(parents=True, exist_ok=True)
        paths = self.paths()
        if paths:  # drop a torn tail so the next frame follows whole ones
            _, valid = read_frames(paths[-1])
            size = paths[-1].stat().st_size
            if valid < size:
                torn = size - valid
                log.warning("event log: %s: skipping a torn tail of %d bytes", paths[-1], torn)
                with open(paths[-1], "r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*" + SUFFIX)) if self.folder.exists() else []

    def read(self) -> Iterator[pa.Table]:
        paths = self.paths()
        for path in paths:
            tables, valid = read_frames(path)  # a reader beside the writer may see a frame
            if valid < path.stat().st_size and path != paths[-1]:  # half-written: skipped
                log.warning("event log: %s: damaged frame at byte %d; rest skipped", path, valid)
            yield from tables

    def read_since(self, position: Position | None) -> tuple[list[pa.Table], Position]:
        """The whole frames after `position` and the position after the last of them. Sealed
        segments never change; the last one may grow, and a torn frame at its end is not read
        past (the next read starts at it, where the writer's next frame goes once it is cut)."""
        segment, offset = (position["segment"], position["offset"]) if position else (0, 0)
        paths = [path for path in self.paths() if int(path.stem) >= segment]
        if segment and (not paths or int(paths[0].stem) != segment):  # 0: before the first
            raise EventLogError(f"event log {self.folder}: segment {segment} of {position} is gone")
        tables: list[pa.Table] = []
        for path in paths:
            start = offset if int(path.stem) == segment else 0
            if start > path.stat().st_size:
                raise EventLogError(f"event log {path}: shorter than the position {position}")
            frames, valid = read_frames(path, start)
            tables += frames
            segment, offset = int(path.stem), valid
        return tables, {"segment": segment, "offset": offset}

    def append(self, table: pa.Table) -> None:
        """One frame; durable per the fsync policy when this returns (lock held by the caller)."""
        frame = encode_frame(table)
        try:
            f = self._current()
            f.write(frame)
            f.flush()  # in the OS: survives the process being killed
            policy, now = self.settings.fsync, time.monotonic()
            if policy == "always" or (
                policy == "interval" and now - self._synced_at >= self.settings.fsync_interval_s
            ):
                os.fsync(f.fileno())
                self._synced_at = now
        except OSError as error:
            self._close_file()  # a half-written frame is truncated at the next open
            raise EventLogError(f"event log {self.folder}: {error}") from error

    def _current(self):
        f = self._file
        too_big = f is not None and f.tell() >= self.settings.segment_bytes
        age = time.monotonic() - self._opened_at
        too_old = f is not None and age >= self.settings.segment_seconds
        if f is None or too_big or too_old:
            self._close_file()
            paths = self.paths()
            last = paths[-1] if paths else None
            small = last is not None and last.stat().st_size < self.settings.segment_bytes
            reuse = f is None and small
            number = int(last.stem) + (0 if reuse else 1) if last else 1
            path = self.folder / f"{number:08d}{SUFFIX}"
            self._file = open(path, "ab")
            self._opened_at = time.monotonic()
            if not reuse:  # the new name must survive a crash too
                _fsync_dir(self.folder)
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError:
                pass
            self._file = None


def _write_synced(path: Path, text: str) -> None:
    """`text` in a new file `path`, on disk when this returns (written whole, then renamed)."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileEventLog:
    """The embedded log: DIR/events/*.seg and DIR/impressions/*.seg. Thread-safe. One writer
    per folder (DIR/LOCK, released by the kernel when the process dies, even by kill -9); any
    number of `read_only` readers beside it (they never repair a tail the writer may be writing).
    """

    def __init__(self, folder: Path, settings: LogSettings | None = None, read_only: bool = False):
        self.folder = Path(folder)
        self.settings = settings or LogSettings()
        self.read_only = read_only
        self._lock_file = None
        if not read_only:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.folder / "LOCK", "a")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise EventLogError(
                    f"event log {self.folder}: another process writes it (one writer per folder)"
                ) from None
        # Each kind's own fsync policy: impressions `impressions_fsync`; every other kind (events,
        # uploads, follows) is acknowledged to its caller once appended, so `fsync`.
        self._kinds = {
            kind: _Segments(
                self.folder / kind,
                schema,
                self.settings.for_impressions() if kind == "impressions" else self.settings,
                not read_only,
            )
            for kind, schema in SCHEMAS.items()
        }
        self._dedup = DedupWindow(self.settings.dedup_window)
        if not read_only:
            self._load_dedup_window()
            if not (self.folder / LOG_ID).exists():
                _write_synced(self.folder / LOG_ID, uuid.uuid4().hex)

    def _load_dedup_window(self) -> None:
        events = self._kinds["events"]
        recent: deque[pa.Table] = deque()
        rows = 0
        for table in events.read():  # the window's keys come back from the log's tail
            recent.append(table)
            rows += table.num_rows
            while rows - recent[0].num_rows >= self.settings.dedup_window:
                rows -= recent.popleft().num_rows
        for table in recent:
            self._dedup.add(event_keys(table))

    def append_events(self, table: pa.Table) -> int:
        return self.append_new_events(table).num_rows

    def append_new_events(self, table: pa.Table) -> pa.Table:
        """Appends the events not already logged (durable on return) and returns them."""
        self._check_writer()
        table = conform(table, EVENTS)
        check_event_names(table)
        segments = self._kinds["events"]
        with segments.lock:
            keys = event_keys(table)
            new = self._dedup.new(keys)
            fresh = table.filter(pa.array(new)) if not new.all() else table
            if fresh.num_rows:
                segments.append(fresh)
                self._dedup.add([k for k, n in zip(keys, new, strict=True) if n])
        return fresh

    def append_impressions(self, table: pa.Table) -> None:
        self._check_writer()
        table = conform(table, IMPRESSIONS)
        segments = self._kinds["impressions"]
        if table.num_rows:
            with segments.lock:
                segments.append(table)

    def append_records(self, kind: str, table: pa.Table) -> None:
        """Appends uploads or follow changes (one of RECORDS), durable on return."""
        self._check_writer()
        table = conform(table, SCHEMAS[check_record_kind(kind)])
        segments = self._kinds[kind]
        if table.num_rows:
            with segments.lock:
                segments.append(table)

    def read_records(self, kind: str) -> pa.Table:
        return self._read(check_record_kind(kind))

    def read_events(self) -> pa.Table:
        return self._read("events")

    def read_impressions(self) -> pa.Table:
        return self._read("impressions")

    def _read(self, kind: str) -> pa.Table:
        segments = self._kinds[kind]
        with segments.lock:
            if segments._file is not None:
                segments._file.flush()
            tables = list(segments.read())
        return concat(tables, segments.schema)

    def read_since(self, kind: str, position: Position | None) -> tuple[pa.Table, Position]:
        """`kind`'s records after `position` (None: all) and the position after them."""
        segments = self._kinds[check_kind(kind)]
        with segments.lock:
            if segments._file is not None:
                segments._file.flush()
            tables, after = segments.read_since(position)
        return concat(tables, segments.schema), after

    def log_id(self) -> str:
        """This log's name, made by its first writer ("" for a log written before it had one)."""
        path = self.folder / LOG_ID
        return path.read_text().strip() if path.exists() else ""

    def _check_writer(self) -> None:
        if self.read_only:
            raise EventLogError(f"event log {self.folder}: opened read-only")

    def close(self) -> None:
        for segments in self._kinds.values():
            with segments.lock:
                segments._close_file()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None
