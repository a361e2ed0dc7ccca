"""`cascade data import`: a user's files -> columns keyed by external ids, with what was dropped.

Reading is streamed batch by batch (cascade.data.tabular); external ids become provisional codes
per batch (pyarrow unique + index_in, one dict lookup per distinct id, not per row), so a 10M-row
file costs its kept numeric columns. cascade.data.assemble turns the result into a Dataset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade.data.mapping import FLAGS, Follows, Items, KnowledgeGraph, Mapping, Users
from cascade.data.schema import DataError
from cascade.data.tabular import Source, as_keys, parse_numbers, parse_times


class KeyIndex:
    """External keys in order of first sight -> provisional codes 0..n-1."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.keys: list[str] = []

    def encode(self, keys: pa.Array) -> np.ndarray:
        distinct = pc.unique(keys)
        lookup = np.fromiter(
            (self._code(k) for k in distinct.to_pylist()), dtype=np.int64, count=len(distinct)
        )
        return lookup[pc.index_in(keys, value_set=distinct).to_numpy(zero_copy_only=False)]

    def _code(self, key: str) -> int:
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.keys)
            self.keys.append(key)
        return code


@dataclass
class Report:
    """Rows dropped (reason -> count, with the first place each happened) and notes."""

    strict: bool = False
    dropped: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, count: int, where: str) -> None:
        """Counts dropped rows; in strict mode the first one is an error instead."""
        if count == 0:
            return
        if self.strict:
            raise DataError(f"{where}: {reason} (strict import: fix the file or drop --strict)")
        self.dropped[reason] += count
        self.first.setdefault(reason, where)


@dataclass
class RawInteractions:
    users: KeyIndex
    items: KeyIndex
    user: np.ndarray  # provisional user codes
    item: np.ndarray
    ts: np.ndarray
    rating: np.ndarray  # float32, NaN = none
    flags: dict[str, np.ndarray]  # play, complete, like, share
    rows: np.ndarray  # the row of each kept interaction in its file, for messages
    source: Source


def read_interactions(mapping: Mapping, report: Report, progress: bool = True) -> RawInteractions:
    spec = mapping.interactions
    source = spec.source
    roles = {spec.user: "user", spec.item: "item", spec.time: "time"}
    roles |= {c: r for r, c in (("event", spec.event), ("rating", spec.rating)) if c}
    source.require(list(roles), roles)
    users, items, events = KeyIndex(), KeyIndex(), KeyIndex()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "item", "ts", "rating", "ev")}
    offset = 0
    for batch in source.batches(list(roles), progress):
        parts["user"].append(users.encode(as_keys(batch[spec.user])))
        parts["item"].append(items.encode(as_keys(batch[spec.item])))
        ts_values = batch[spec.time].combine_chunks()
        parts["ts"].append(parse_times(source, spec.time, ts_values, offset, spec.time_format))
        if spec.rating:
            values = batch[spec.rating].combine_chunks()
            parts["rating"].append(
                parse_numbers(source, spec.rating, values, offset, "float", "rating")
            )
        if spec.event:
            parts["ev"].append(events.encode(as_keys(batch[spec.event])))
        offset += batch.num_rows
    if offset == 0:
        raise DataError(f"{source.path} line 2: no data rows after the header")
    user, item = np.concatenate(parts["user"]), np.concatenate(parts["item"])
    ts = np.concatenate(parts["ts"])
    n = len(user)
    rating = (
        np.concatenate(parts["rating"]).astype(np.float32)
        if spec.rating
        else np.full(n, np.nan, np.float32)
    )
    keep = np.ones(n, dtype=bool)
    for index, column in ((users, spec.user), (items, spec.item)):
        empty = index.codes.get("")
        codes = user if index is users else item
        bad = keep & (codes == empty) if empty is not None else np.zeros(n, bool)
        _drop(report, keep, bad, f"empty id in column {column!r}", source)
    flags = {flag: np.zeros(n, dtype=bool) for flag in FLAGS}
    flags["play"][:] = True  # every kept interaction is a consumption
    if spec.event:
        event = np.concatenate(parts["ev"])
        mapped = np.zeros(n, dtype=bool)
        for flag, values in spec.events.items():
            event_codes = [events.codes[v] for v in values if v in events.codes]
            hit = np.isin(event, event_codes)
            flags[flag] |= hit
            mapped |= hit
        unmapped = Counter(events.keys[c] for c in event[keep & ~mapped][:100_000])
        if unmapped:
            report.notes.append(
                f"event values not mapped to {'/'.join(FLAGS)}: "
                + ", ".join(f"{v!r} x{c}" for v, c in unmapped.most_common(5))
            )
        _drop(
            report, keep, keep & ~mapped, f"event value not mapped (column {spec.event!r})", source
        )
    else:
        event = np.zeros(n, dtype=np.int64)
    if spec.rating:
        flags["like"] |= rating >= spec.like_threshold
    _drop_duplicates(report, keep, user, item, ts, event, rating, source)
    rows = np.flatnonzero(keep)
    return RawInteractions(
        users,
        items,
        user[keep],
        item[keep],
        ts[keep],
        rating[keep],
        {k: v[keep] for k, v in flags.items()},
        rows,
        source,
    )


def _drop(report: Report, keep: np.ndarray, bad: np.ndarray, reason: str, source: Source) -> None:
    rows = np.flatnonzero(bad)
    if len(rows):
        report.drop(reason, len(rows), source.where(int(rows[0])))
        keep &= ~bad


def _drop_duplicates(report, keep, user, item, ts, event, rating, source: Source) -> None:
    """Rows repeating an earlier row's user, item, time, event and rating exactly."""
    rating_bits = np.where(np.isnan(rating), np.float32(-1e30), rating).view(np.int32)
    order = np.lexsort((np.arange(len(user)), rating_bits, event, ts, item, user))
    same = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        a, b = order[1:], order[:-1]
        same[1:] = (
            (user[a] == user[b])
            & (item[a] == item[b])
            & (ts[a] == ts[b])
            & (event[a] == event[b])
            & (rating_bits[a] == rating_bits[b])
        )
    duplicate = np.zeros(len(user), dtype=bool)
    duplicate[order[same]] = True
    duplicate &= keep
    rows = np.flatnonzero(duplicate)
    if len(rows):
        report.drop(
            "duplicate row (same user, item, time, event and rating as an earlier row)",
            len(rows),
            source.where(int(rows[0])),
        )
        keep &= ~duplicate


def read_table(source: Source, key: str, columns: dict[str, str | None], what: str):
    """A per-entity file (items, users) as {role: values}: keys unique, values as text."""
    wanted = {role: c for role, c in columns.items() if c}
    source.require([key, *wanted.values()], {key: what, **{c: r for r, c in wanted.items()}})
    keys: list[pa.Array] = []
    values: dict[str, list[pa.Array]] = {role: [] for role in wanted}
    for batch in source.batches([key, *wanted.values()]):
        keys.append(as_keys(batch[key]))
        for role, column in wanted.items():
            values[role].append(batch[column].combine_chunks())
    if not keys or sum(len(k) for k in keys) == 0:
        raise DataError(f"{source.path} line 2: no data rows after the header")
    key_array = pa.concat_arrays(keys)
    counts = pc.value_counts(key_array)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0].as_py()
        rows = np.flatnonzero(pc.equal(key_array, first).to_numpy(zero_copy_only=False))
        raise DataError(
            f"{source.where(int(rows[1]))}, column {key!r}: {what} {first!r} is listed twice "
            f"(first at {source.where(int(rows[0]))})"
        )
    empty = np.flatnonzero(pc.equal(key_array, "").to_numpy(zero_copy_only=False))
    if len(empty):
        raise DataError(f"{source.where(int(empty[0]))}, column {key!r}: empty {what}")
    return key_array.to_pylist(), {r: pa.concat_arrays(v) for r, v in values.items()}


def read_items(spec: Items) -> tuple[list[str], dict[str, pa.Array]]:
    columns = {
        "title": spec.title,
        "creator": spec.creator,
        "categories": spec.categories,
        "upload_time": spec.upload_time,
    }
    keys, values = read_table(spec.source, spec.item, columns, "item id")
    if spec.upload_time is not None and "upload_time" in values:
        values["upload_ts"] = parse_times(
            spec.source, spec.upload_time, values.pop("upload_time"), 0, spec.upload_time_format
        )
    return keys, values


def read_users(spec: Users) -> tuple[list[str], dict[str, pa.Array]]:
    columns = {
        "age": spec.age,
        "gender": spec.gender,
        "occupation": spec.occupation,
        "region": spec.region,
    }
    return read_table(spec.source, spec.user, columns, "user id")


def read_follows(spec: Follows) -> tuple[pa.Array, pa.Array, np.ndarray]:
    roles = {spec.follower: "follower", spec.followee: "followee"}
    if spec.time:
        roles[spec.time] = "time"
    spec.source.require(list(roles), roles)
    follower, followee, ts = [], [], []
    offset = 0
    for batch in spec.source.batches(list(roles)):
        follower.append(as_keys(batch[spec.follower]))
        followee.append(as_keys(batch[spec.followee]))
        if spec.time:
            values = batch[spec.time].combine_chunks()
            ts.append(parse_times(spec.source, spec.time, values, offset, spec.time_format))
        offset += batch.num_rows
    if offset == 0:
        raise DataError(f"{spec.source.path} line 2: no data rows after the header")
    times = np.concatenate(ts) if spec.time else np.zeros(offset, dtype=np.int64)
    return pa.concat_arrays(follower), pa.concat_arrays(followee), times


def read_creators_from_kg(kg: KnowledgeGraph) -> dict[str, str]:
    """item key -> creator entity: the smallest tail of the relation (several: first by id)."""
    link_names = kg.link.header()
    kg_names = kg.kg.header()
    if len(link_names) < 2 or len(kg_names) < 3:
        raise DataError(
            f"{kg.link.path} / {kg.kg.path}: expected (item, entity) and "
            "(head, relation, tail) columns"
        )
    entity_item: dict[str, str] = {}
    for batch in kg.link.batches(link_names[:2]):
        items, entities = (as_keys(batch[c]).to_pylist() for c in link_names[:2])
        entity_item.update(zip(entities, items, strict=True))
    creators: dict[str, str] = {}
    for batch in kg.kg.batches(kg_names[:3]):
        relation = as_keys(batch[kg_names[1]])
        batch = batch.filter(pc.equal(relation, kg.creator_relation))
        heads, tails = (as_keys(batch[c]).to_pylist() for c in (kg_names[0], kg_names[2]))
        for head, tail in zip(heads, tails, strict=True):
            item = entity_item.get(head)
            if item is not None:
                creators[item] = min(creators.get(item, tail), tail)
    return creators
