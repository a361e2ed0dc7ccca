"""The backends behind the `store` and `event_log` settings, chosen by URL: the embedded ones
(cascade.feature_store, cascade.eventlog) or Redis (cascade.redis_store, cascade.eventlog_redis).
The Redis backends build on the embedded modules, so the choice lives here, above both.
"""

from __future__ import annotations

from pathlib import Path

from cascade.data.schema import Dataset
from cascade.eventlog import EventLog, FileEventLog, LogSettings
from cascade.feature_store import (
    FeatureStore,
    InMemoryFeatureStore,
    StoreLimits,
    check_store_setting,
)
from cascade.features import FeatureSpec
from cascade.redis_client import is_redis_url


def open_store(
    store: str, dataset: Dataset, spec: FeatureSpec, split, limits: StoreLimits | None = None
) -> FeatureStore:
    """The serving store the `store` setting names, loaded with the training period `split`."""
    check_store_setting(store)
    if store == "memory":
        return InMemoryFeatureStore.from_split(dataset, spec, split, limits)
    from cascade.redis_store import RedisFeatureStore  # only deployments with Redis import it

    return RedisFeatureStore.from_split(dataset, spec, split, store, limits)


def open_event_log(
    uri: str, settings: LogSettings | None = None, read_only: bool = False
) -> EventLog:
    """`file:/path/to/dir` (embedded) or `redis://host:port/db` (shared). `read_only`: a reader
    beside the running writer (the file backend allows one writer per folder)."""
    settings = settings or LogSettings()
    if uri.startswith("file:"):
        return FileEventLog(Path(uri.removeprefix("file:")), settings, read_only)
    if is_redis_url(uri):
        from cascade.eventlog_redis import RedisEventLog

        return RedisEventLog(uri, settings)
    raise ValueError(f"event log {uri!r}: expected file:/path or redis://host:port/db")


def replay_catalog_from(store: FeatureStore, uri: str) -> tuple[int, int]:
    """Gives a stage's store every upload and follow change the log `uri` holds (at start: the
    living catalogue survives a restart); returns (uploads, follow changes)."""
    from cascade.live_catalog import replay_catalog

    log = open_event_log(uri, read_only=True)  # the gateway is the log's one writer
    try:
        return replay_catalog(store, log)
    finally:
        log.close()
