"""The retrain's read of the event log: only the records after the served bundle's data ends.

A bundle trained on the log records where its data ends: its manifest's `log_position` holds
the log's id and, per record kind the retrain reads (KINDS), the position after the last record
it folded in (cascade/eventlog.py `read_since`). The bundle also holds those records: events and
served pages in its `eventlog` component, projected to the columns training reads (HELD), and
uploads in its `catalog` component (cascade/catalog_fold.py). The next retrain reads only what
follows the position and appends it to what the bundle holds, so it trains on the same tables a
read of the whole log gives while the log is read once overall: a click logged today on a page
served yesterday still labels that page, and a play heard last week still counts in a user's
history.

The position is taken when the read happens, so records appended while the retrain trains are
left for the next one; it is published with the bundle only, so a retrain stopped before it
publishes leaves the served position as it was. A bundle without a position (trained before
positions existed, or on the dataset alone) or with another log's position reads the log from
its start, once, and says so in the log.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cascade.artifacts import Bundle, BundleWriter
from cascade.backends import open_event_log
from cascade.catalog_fold import bundle_uploads
from cascade.eventlog import SCHEMAS, concat

log = logging.getLogger(__name__)

KINDS = ("events", "impressions", "uploads")  # the record kinds a retrain reads
POSITION = "log_position"  # the manifest key: {"log": log id, "kinds": {kind: position}}
COMPONENT = "eventlog"
# The columns training reads (training/fold.py): the rest (scores, versions, keys) stays in the log.
HELD = {
    "events": ("user_id", "item_id", "event", "timestamp_ms", "request_id"),
    "impressions": (
        "request_id",
        "user_id",
        "request_time_ms",
        "arm",
        "item_ids",
        "positions",
        "channel_masks",
        "explored",
    ),
    "uploads": tuple(SCHEMAS["uploads"].names),
}


def held_schema(kind: str) -> pa.Schema:
    return pa.schema([SCHEMAS[kind].field(name) for name in HELD[kind]])


@dataclass(frozen=True)
class LogRead:
    """The log's records up to `position` (what the bundle held plus what was read after it)."""

    events: pa.Table
    impressions: pa.Table
    uploads: pa.Table
    position: dict[str, Any]
    rows_read: dict[str, int] = field(default_factory=dict)  # per kind, read from the log itself


def read_log_since(url: str, bundle: Bundle) -> LogRead:
    """The log `url` up to now: `bundle`'s held records plus the log's records after its
    position (read beside a running writer)."""
    event_log = open_event_log(url, read_only=True)
    try:
        log_id = event_log.log_id()
        recorded = recorded_position(bundle, log_id)
        held = held_records(bundle) if recorded else {}
        new, kinds = {}, {}
        for kind in KINDS:
            after = recorded["kinds"].get(kind) if recorded else None
            new[kind], kinds[kind] = event_log.read_since(kind, after)
    finally:
        event_log.close()
    tables = {
        kind: concat([*held.get(kind, []), project(kind, new[kind])], held_schema(kind))
        for kind in KINDS
    }
    return LogRead(
        tables["events"],
        tables["impressions"],
        tables["uploads"],
        {"log": log_id, "kinds": kinds},
        {kind: new[kind].num_rows for kind in KINDS},
    )


def recorded_position(bundle: Bundle, log_id: str) -> dict[str, Any] | None:
    """`bundle`'s position in the log named `log_id`; None (read from the start) without one."""
    recorded = bundle.manifest.get(POSITION)
    if recorded is None:
        log.info(
            "event log: bundle %s records no log position: reading the log from its start",
            bundle.version,
        )
        return None
    if recorded["log"] != log_id:
        log.warning(
            "event log: bundle %s's position is in log %r, not this log (%r): reading the log "
            "from its start",
            bundle.version,
            recorded["log"],
            log_id,
        )
        return None
    return recorded


def held_records(bundle: Bundle) -> dict[str, list[pa.Table]]:
    """The records `bundle` was trained on up to its position."""
    held = {"uploads": [bundle_uploads(bundle)]}
    for kind in ("events", "impressions"):
        with pa.memory_map(str(bundle.file(COMPONENT, f"{kind}.arrow"))) as source:
            held[kind] = [pa.ipc.open_file(source).read_all()]
    return held


def project(kind: str, table: pa.Table) -> pa.Table:
    return table.select(list(HELD[kind]))


def save_log(
    writer: BundleWriter, events: pa.Table, impressions: pa.Table, position: dict[str, Any] | None
) -> None:
    """Records in the bundle being written the log records it trained on and where they end (its
    uploads go in its `catalog` component, cascade/catalog_fold.save_uploads). Without a position
    (records not read up to one) it records none, also none cloned from its source bundle: the
    next retrain reads the log from its start."""
    if position is None:
        writer.manifest.pop(POSITION, None)
        writer.manifest["components"].pop(COMPONENT, None)
        for name in [name for name in writer.manifest["files"] if name.startswith(f"{COMPONENT}/")]:
            del writer.manifest["files"][name]
        shutil.rmtree(writer.folder / COMPONENT, ignore_errors=True)  # hard links: source kept
        writer.commit()
        return
    for kind, table in (("events", events), ("impressions", impressions)):
        schema = held_schema(kind)
        with pa.OSFile(str(writer.path(COMPONENT, f"{kind}.arrow")), "wb") as sink:
            with pa.ipc.new_file(sink, schema) as out:
                out.write_table(project(kind, table).cast(schema))
        writer.add(COMPONENT, f"{kind}.arrow")
    writer.set_component(COMPONENT, {"events": events.num_rows, "pages": impressions.num_rows})
    writer.manifest[POSITION] = position
    writer.commit()
