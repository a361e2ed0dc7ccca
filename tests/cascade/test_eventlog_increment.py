"""The retrain's read of the event log: a bundle's held records plus only what follows its
recorded position give the tables a read of the whole log gives; a bundle without a position (or
with another log's) reads from the start; on the embedded files and on a real redis-server."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from cascade.artifacts import Bundle, BundleWriter, clone, publish
from cascade.backends import open_event_log
from cascade.catalog_fold import save_uploads
from cascade.eventlog_increment import POSITION, LogRead, project, read_log_since, save_log
from cascade.live_catalog import UPLOADS
from tests.cascade.test_eventlog import events, impression


@pytest.fixture(params=["file", "redis"])
def log_uri(request, tmp_path) -> str:
    if request.param == "file":
        return f"file:{tmp_path / 'log'}"
    return request.getfixturevalue("redis_url")


def uploads(*ids: int) -> pa.Table:
    return pa.table(
        {
            "item_id": list(ids),
            "item_key": [f"new-{i}" for i in ids],
            "creator_id": [1] * len(ids),
            "categories": [[2]] * len(ids),
            "upload_ms": [5_000 + i for i in ids],
            "logged_ms": [6_000 + i for i in ids],
            "content": [[]] * len(ids),
        },
        schema=UPLOADS,
    )


def dataset_bundle(root) -> Bundle:
    """A published bundle trained on the dataset alone: no log position."""
    writer = BundleWriter(root, "v0")
    writer.save_json("rank", "rank.json", {"tasks": ["play"]})
    writer.set_component("rank", {"version": "v0"})
    writer.commit()
    publish(root, "v0")
    return Bundle.open(root)


def publish_read(root, version: str, read: LogRead) -> Bundle:
    """What the retrain does with a read: a new bundle holding it, published."""
    clone(root, Bundle.open(root).version, version)
    if read.uploads.num_rows:
        save_uploads(BundleWriter(root, version), read.uploads)
    save_log(BundleWriter(root, version), read.events, read.impressions, read.position)
    publish(root, version)
    return Bundle.open(root)


def test_a_bundle_with_a_position_reads_only_the_new_records(log_uri, tmp_path, caplog):
    root = tmp_path / "artifacts"
    log = open_event_log(log_uri)
    log.append_events(events(3))
    log.append_impressions(impression("a"))
    log.append_records("uploads", uploads(100))
    with caplog.at_level(logging.INFO, logger="cascade.eventlog_increment"):
        first = read_log_since(log_uri, dataset_bundle(root))
    assert "records no log position: reading the log from its start" in caplog.text
    assert first.rows_read == {"events": 3, "impressions": 1, "uploads": 1}
    bundle = publish_read(root, "v1", first)
    assert bundle.manifest[POSITION] == first.position
    # The next day: new events (one a late like on yesterday's page), a page and an upload.
    late = events(1, start=7, request_id="a").set_column(
        3, "event", pa.array(["like"], pa.string())
    )
    log.append_events(pa.concat_tables([events(2, start=3), late]))
    log.append_impressions(impression("b"))
    log.append_records("uploads", uploads(101))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cascade.eventlog_increment"):
        second = read_log_since(log_uri, bundle)
    assert "from its start" not in caplog.text
    assert second.rows_read == {"events": 3, "impressions": 1, "uploads": 1}  # the new only
    # Parity: the bundle's records plus the new ones are the whole log's.
    assert second.events.equals(project("events", log.read_events()))
    assert second.impressions.equals(project("impressions", log.read_impressions()))
    assert second.uploads.equals(log.read_records("uploads"))
    assert second.impressions["request_id"].to_pylist() == ["a", "b"]
    # Nothing appended since: nothing read, the same tables.
    bundle = publish_read(root, "v2", second)
    third = read_log_since(log_uri, bundle)
    assert third.rows_read == {"events": 0, "impressions": 0, "uploads": 0}
    assert third.events.equals(second.events) and third.position == second.position
    log.close()


def test_an_unpublished_read_leaves_the_position_and_another_logs_position_reads_all(
    tmp_path, caplog
):
    root = tmp_path / "artifacts"
    url = f"file:{tmp_path / 'log'}"
    log = open_event_log(url)
    log.append_events(events(2))
    log.append_impressions(impression("a"))
    bundle = publish_read(root, "v1", read_log_since(url, dataset_bundle(root)))
    log.append_events(events(2, start=2))
    # A retrain that wrote its bundle but stopped before publishing: the served position holds.
    interrupted = read_log_since(url, bundle)
    clone(root, "v1", "v2")
    save_log(BundleWriter(root, "v2"), interrupted.events, interrupted.impressions, {})
    assert read_log_since(url, Bundle.open(root)).rows_read["events"] == 2
    # A bundle trained on records read some other way (no position) claims none, not even its
    # source's: the next read starts from the log's start.
    save_log(BundleWriter(root, "v2"), interrupted.events, interrupted.impressions, None)
    publish(root, "v2")
    assert POSITION not in Bundle.open(root).manifest
    assert "eventlog" not in Bundle.open(root).manifest["components"]
    assert read_log_since(url, Bundle.open(root)).rows_read["events"] == 4
    publish(root, "v1")
    # The same bundle beside another log (a new run's): its position means nothing there.
    other = f"file:{tmp_path / 'other'}"
    writer = open_event_log(other)
    writer.append_events(events(1, start=9))
    writer.close()
    with caplog.at_level(logging.WARNING, logger="cascade.eventlog_increment"):
        read = read_log_since(other, Bundle.open(root))
    assert "not this log" in caplog.text
    assert read.events["item_id"].to_pylist() == [19] and read.impressions.num_rows == 0
    log.close()
