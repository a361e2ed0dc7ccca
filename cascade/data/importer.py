"""`cascade data import`: the per-entity files (items, users, follows, knowledge graph) -> columns
keyed by external ids, and the Report of what was dropped.

These files hold one row per entity: they are read whole, batch by batch (cascade.data.tabular),
and checked with vectorised kernels. The interactions are streamed (cascade.data.staging);
cascade.data.assemble writes the dataset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade.data.mapping import Follows, Items, KnowledgeGraph, Users
from cascade.data.schema import DataError
from cascade.data.tabular import Source, as_keys, parse_times


@dataclass
class Report:
    """Rows dropped (reason -> count, with the first place each happened), notes, and what was
    kept (interactions and their time span, for the summary without reading them back)."""

    strict: bool = False
    dropped: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interactions: int = 0
    time_span: tuple[int, int] = (0, 0)
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds since the start

    def drop(self, reason: str, count: int, where: str) -> None:
        """Counts dropped rows; in strict mode the first one is an error instead."""
        if count == 0:
            return
        if self.strict:
            raise DataError(f"{where}: {reason} (strict import: fix the file or drop --strict)")
        self.dropped[reason] += count
        self.first.setdefault(reason, where)


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
        "content": spec.content,
    }
    keys, values = read_table(spec.source, spec.item, columns, "item id")
    if spec.upload_time is not None and "upload_time" in values:
        values["upload_ts"] = parse_times(
            spec.source, spec.upload_time, values.pop("upload_time"), 0, spec.upload_time_format
        )
    if spec.content is not None and "content" in values:
        values["content"] = parse_content(spec, values["content"])
    return keys, values


def parse_content(spec: Items, column: pa.Array) -> np.ndarray:
    """(n, d) float32 content vectors, one a row of the items file (text of floats joined by
    the delimiter, or a list column); an empty cell is the unknown vector (zeros). A row of
    another width than the first, or with a value that is not a finite number, is an error
    naming its file, line or row, and column."""
    rows: list[list[float] | None] = []
    width: int | None = None
    for row, cell in enumerate(column.to_pylist()):
        if cell is None or (isinstance(cell, str) and not cell.strip()):
            rows.append(None)
            continue
        parts = cell.split(spec.content_delimiter) if isinstance(cell, str) else list(cell)
        parts = [p for p in parts if not isinstance(p, str) or p.strip()]
        try:
            vector = [float(p) for p in parts]
        except (TypeError, ValueError):
            bad = next(p for p in parts if not _is_number(p))
            raise DataError(
                f"{spec.source.where(row)}, column {spec.content!r}: content value {bad!r} "
                "is not a number"
            ) from None
        if not np.isfinite(vector).all():
            raise DataError(
                f"{spec.source.where(row)}, column {spec.content!r}: content values must be "
                "finite numbers"
            )
        width = len(vector) if width is None else width
        if len(vector) != width or width == 0:
            raise DataError(
                f"{spec.source.where(row)}, column {spec.content!r}: {len(vector)} content "
                f"values, the rows before have {width}"
            )
        rows.append(vector)
    out = np.zeros((len(rows), width or 0), dtype=np.float32)
    for row, values in enumerate(rows):
        if values is not None:
            out[row] = values
    return out


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except (TypeError, ValueError):
        return False
    return True


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
