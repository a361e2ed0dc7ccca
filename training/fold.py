"""Folds what the stack served and heard (the event log) into a dataset, so training sees it.

Each impression record (a served page) becomes one impression row per shown item, labelled by
the events that came back with its request_id (click, play, complete, like, share); each played
item becomes an interaction. The result is the same schema every trainer reads, so
`cascade train all` retrains on the cascade's own exposures: the distribution it serves, not
only the logging policy's. Users first seen online get a profile row with unknown attributes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from cascade.data.schema import Dataset, Table

LABELS = ("click", "play", "complete", "like", "share")


def served_impressions(events: pa.Table, impressions: pa.Table) -> Table:
    """One row per shown item of every logged page, labelled by its page's events.

    `impressions`: request_id, user_id, request_time_ms, item_ids (list), positions (list);
    `events`: request_id, item_id, event. An event whose request_id matches no page is ignored
    here (it still counts as an interaction when it is a play). A shadow ranking (arm
    "shadow:NAME", gateway/shadow.py) was never shown: it is no example. With the record's
    `channel_masks`, each row also carries its `channel_mask` (the ranker's channels field); with
    `explored`, its `explored` flag (a slot the traffic pool filled, gateway/pool.py: its position
    is the slot it was shown at, so position-bias weights stay right)."""
    if "arm" in impressions.column_names:
        arms = impressions["arm"].to_pylist()
        shown = pa.array([not a.startswith("shadow:") for a in arms], type=pa.bool_())
        impressions = impressions.filter(shown)
    lengths = np.asarray(impressions["item_ids"].combine_chunks().value_lengths(), np.int64)
    pages = np.repeat(np.arange(len(lengths)), lengths)
    request = np.asarray(impressions["request_id"].to_pylist(), dtype=object)[pages]
    item = np.asarray(impressions["item_ids"].combine_chunks().flatten(), np.int64)
    rows = {
        "user_id": impressions["user_id"].to_numpy()[pages].astype(np.int64),
        "item_id": item,
        "ts": impressions["request_time_ms"].to_numpy()[pages].astype(np.int64) // 1000,
        "position": np.asarray(
            impressions["positions"].combine_chunks().flatten(), np.int64
        ).astype(np.int16),
    }
    if "channel_masks" in impressions.column_names:  # the recall channels that found each item
        masks = np.asarray(impressions["channel_masks"].combine_chunks().flatten(), np.uint32)
        if len(masks) == len(item):  # else a record without masks: the channels stay unknown
            rows["channel_mask"] = masks
    if "explored" in impressions.column_names:  # slots the traffic pool filled (null: none)
        flags = impressions["explored"].to_pylist()
        rows["explored"] = np.array(
            [
                f
                for flag, n in zip(flags, lengths.tolist(), strict=True)
                for f in flag or [False] * n
            ],
            dtype=bool,
        )
    keys = {(r, i): n for n, (r, i) in enumerate(zip(request.tolist(), item.tolist(), strict=True))}
    for label in LABELS:
        rows[label] = np.zeros(len(item), dtype=bool)
    for r, i, event in zip(
        events["request_id"].to_pylist(),
        events["item_id"].to_pylist(),
        events["event"].to_pylist(),
        strict=True,
    ):
        row = keys.get((r, i))
        if row is not None and event in LABELS:
            rows[event][row] = True
    return rows


def heard_interactions(events: pa.Table) -> Table:
    """One interaction per (user, item, request) that was played, flagged by what followed."""
    names = np.asarray(events["event"].to_pylist(), dtype=object)
    users = events["user_id"].to_numpy().astype(np.int64)
    items = events["item_id"].to_numpy().astype(np.int64)
    stamps = events["timestamp_ms"].to_numpy().astype(np.int64)
    requests = events["request_id"].to_pylist()
    played: dict[tuple, dict] = {}
    order = np.argsort(stamps, kind="stable")
    for n in order.tolist():  # plays first in time, so a later like finds its play
        key = (int(users[n]), int(items[n]), requests[n])
        if names[n] == "play" and key not in played:
            played[key] = {"ts": int(stamps[n] // 1000), **{label: False for label in LABELS}}
        if key in played and names[n] in LABELS:
            played[key][names[n]] = True
    keys = list(played)
    return {
        "user_id": np.array([k[0] for k in keys], dtype=np.int64),
        "item_id": np.array([k[1] for k in keys], dtype=np.int64),
        "ts": np.array([played[k]["ts"] for k in keys], dtype=np.int64),
        "play": np.ones(len(keys), dtype=bool),
        **{
            label: np.array([played[k][label] for k in keys], dtype=bool)
            for label in ("complete", "like", "share")
        },
        "rating": np.full(len(keys), np.nan, dtype=np.float32),
    }


def fold(dataset: Dataset, events: pa.Table, impressions: pa.Table) -> Dataset:
    """`dataset` with the log's plays appended to interactions and its served pages (with their
    outcomes) appended to impressions, time-ordered; new users get unknown-attribute rows."""
    interactions = _concat(dataset.interactions, heard_interactions(events))
    served = served_impressions(events, impressions)
    logged = _concat(dataset.impressions, served)
    users = dataset.users
    seen = np.union1d(interactions["user_id"], logged["user_id"])
    new = np.setdiff1d(seen, users["user_id"])
    if len(new):
        unknown = {"age": -1, "gender": 0, "occupation": 0, "region": 0}
        extra = {"user_id": new} | {
            column: np.full(len(new), value, dtype=users[column].dtype)
            for column, value in unknown.items()
        }
        users = _concat(users, extra, key="user_id")
    return dataclasses.replace(dataset, users=users, interactions=interactions, impressions=logged)


def _concat(table: Table, more: Table, key: str = "ts") -> Table:
    joined = {c: np.concatenate([table[c], more[c].astype(table[c].dtype)]) for c in table}
    order = np.argsort(joined[key], kind="stable")
    return {c: v[order] for c, v in joined.items()}
