"""The shared event log on Redis Streams: several gateways append to one place.

One stream per record kind (`PREFIX:{events}`, `PREFIX:{impressions}`), trimmed to about `maxlen`
entries (XADD MAXLEN ~). An event is one stream entry whose fields are the EVENTS columns; an
impression is one entry holding its row as a one-row Arrow IPC stream (field `arrow`), since its
columns are lists. Dedup and append run in one Lua script, so a repeat is recorded once even when
two gateways receive it: each event's key is SET NX with a TTL (the dedup window) before XADD.
The dedup keys carry the events stream's hash tag, so on a Redis Cluster (`redis+cluster://`)
the script touches one slot; each stream is one key, so it lives on one master.
Durable on return as far as Redis's own persistence goes (AOF with `appendfsync always`: on disk).
A reader's position in a stream is the id of the last entry it read (XRANGE from the exclusive
next one); `PREFIX:log_id`, set once, names the log the ids belong to.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import redis

from cascade.eventlog import (
    EVENTS,
    IMPRESSIONS,
    RECORDS,
    SCHEMAS,
    EventLogError,
    LogSettings,
    Position,
    check_event_names,
    check_kind,
    check_record_kind,
    concat,
    conform,
    event_keys,
)
from cascade.redis_client import connect

FIELDS = EVENTS.names
# ARGV: maxlen, ttl, then per event its dedup key and the 7 EVENTS fields in order.
# Returns a 0/1 flag per event: 1 = new (appended), 0 = a repeat.
APPEND = """
local maxlen, ttl, n = ARGV[1], tonumber(ARGV[2]), (#ARGV - 2) / 8
local out = {}
for i = 0, n - 1 do
  local base = 3 + i * 8
  if redis.call('SET', KEYS[2] .. ARGV[base], 1, 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
      'user_id', ARGV[base + 1], 'user_key', ARGV[base + 2], 'item_id', ARGV[base + 3],
      'event', ARGV[base + 4], 'timestamp_ms', ARGV[base + 5], 'request_id', ARGV[base + 6],
      'logged_ms', ARGV[base + 7])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
READ_CHUNK = 10_000


class RedisEventLog:
    def __init__(self, uri: str, settings: LogSettings | None = None, prefix: str = "cascade"):
        self.settings = settings or LogSettings()
        self.client = connect(uri, 5.0, connect_timeout_s=2.0)
        kinds = ("events", "impressions", *RECORDS)
        self.streams = {kind: f"{prefix}:{{{kind}}}" for kind in kinds}  # tagged: see above
        self.dedup_prefix = f"{prefix}:{{events}}:seen:"
        self.id_key = f"{prefix}:log_id"
        self._append = self.client.register_script(APPEND)

    def append_events(self, table: pa.Table) -> int:
        return self.append_new_events(table).num_rows

    def append_new_events(self, table: pa.Table) -> pa.Table:
        table = conform(table, EVENTS)
        check_event_names(table)
        if not table.num_rows:
            return table
        columns = [table[name].to_pylist() for name in FIELDS]
        args: list = [self.settings.maxlen, self.settings.dedup_ttl_s]
        for key, row in zip(event_keys(table), zip(*columns, strict=True), strict=True):
            args.append(hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest())
            args.extend(row)
        keys = [self.streams["events"], self.dedup_prefix]
        try:
            flags = self._append(keys=keys, args=args)
        except redis.RedisError as error:
            raise EventLogError(f"event log {self.streams['events']}: {error}") from error
        return table.filter(pa.array([bool(f) for f in flags]))

    def append_impressions(self, table: pa.Table) -> None:
        table = conform(table, IMPRESSIONS)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for i in range(table.num_rows):
                    pipe.xadd(
                        self.streams["impressions"],
                        {"arrow": _ipc(table.slice(i, 1))},
                        maxlen=self.settings.maxlen,
                        approximate=True,
                    )
                pipe.execute()
        except redis.RedisError as error:
            raise EventLogError(f"event log {self.streams['impressions']}: {error}") from error

    def append_records(self, kind: str, table: pa.Table) -> None:
        """Uploads or follow changes: one entry holding the batch as an Arrow IPC stream."""
        table = conform(table, SCHEMAS[check_record_kind(kind)])
        if not table.num_rows:
            return
        try:
            self.client.xadd(
                self.streams[kind],
                {"arrow": _ipc(table)},
                maxlen=self.settings.maxlen,
                approximate=True,
            )
        except redis.RedisError as error:
            raise EventLogError(f"event log {self.streams[kind]}: {error}") from error

    def read_records(self, kind: str) -> pa.Table:
        return self.read_since(check_record_kind(kind), None)[0]

    def read_events(self) -> pa.Table:
        return self.read_since("events", None)[0]

    def read_impressions(self) -> pa.Table:
        return self.read_since("impressions", None)[0]

    def read_since(self, kind: str, position: Position | None) -> tuple[pa.Table, Position]:
        """`kind`'s entries after `position` (None: all) and the position after them. Entries
        trimmed away (MAXLEN) before they were read are lost to the reader."""
        last = position["id"] if position else "0-0"
        entries = list(self._entries(check_kind(kind), last))
        if entries:
            last = _text(entries[-1][0])
        return _decode(kind, [fields for _, fields in entries]), {"id": last}

    def log_id(self) -> str:
        """This log's name, set by the first reader or writer to ask."""
        try:
            self.client.set(self.id_key, uuid.uuid4().hex, nx=True)
            return _text(self.client.get(self.id_key))
        except redis.RedisError as error:
            raise EventLogError(f"event log {self.id_key}: {error}") from error

    def _entries(self, kind: str, after: str = "0-0") -> Iterator[tuple[Any, Any]]:
        """The stream's entries after id `after`, in append order, read in chunks."""
        while True:
            start = "(" + after
            chunk = self.client.xrange(self.streams[kind], min=start, count=READ_CHUNK) or []
            yield from chunk
            if len(chunk) < READ_CHUNK:
                return
            after = _text(chunk[-1][0])  # the entry id: bytes, as the client does not decode

    def close(self) -> None:
        self.client.close()


def _decode(kind: str, entries: list[dict]) -> pa.Table:
    """Stream entries' fields as a table of `kind`'s schema."""
    if kind != "events":  # one Arrow IPC stream per entry
        tables = [pa.ipc.open_stream(fields[b"arrow"]).read_all() for fields in entries]
        return concat(tables, SCHEMAS[kind])
    rows: dict[str, list] = {name: [] for name in FIELDS}
    for fields in entries:
        for name in FIELDS:
            rows[name].append(fields[name.encode()].decode())
    return pa.table(rows).cast(EVENTS)


def _text(value: bytes | str | None) -> str:
    """A Redis reply as text (bytes, as the client does not decode)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
