"""`cascade data import`, second half: external ids -> dense ids, the common schema, atomic write.

Dense ids come from cascade.ids.IdMap. When a file's ids are exactly the integers 1..n they keep
their values (an identity map: MovieLens imported this way equals the built-in source); otherwise
ids are numbered in the order of the items / users file, then of first sight in the interactions.
The dataset is written to a temporary folder beside data/NAME and renamed at the end.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cascade.data import importer
from cascade.data.importer import Report
from cascade.data.mapping import FLAGS, Mapping
from cascade.data.schema import MAX_CATEGORIES, DataError, Dataset, ParquetTable, save
from cascade.data.staging import Flag, Staging
from cascade.ids import IdMap

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_GENDERS = {"m": 1, "male": 1, "f": 2, "female": 2, "o": 3, "other": 3, "x": 3}


def dense_ids(keys: list[str]) -> tuple[IdMap, np.ndarray]:
    """The id map over `keys` (in order) and each key's dense id."""
    n = len(keys)
    if all(k.isdigit() and k[0] != "0" for k in keys) and set(map(int, keys)) == set(
        range(1, n + 1)
    ):
        ids = np.array([int(k) for k in keys], dtype=np.int64)
        return IdMap(n, identity=n), ids
    return IdMap(n, known=keys), np.arange(1, n + 1, dtype=np.int64)


def _codes(values: list[str], unknown: str) -> tuple[list[str], np.ndarray]:
    """Names (index 0 = `unknown`, the rest sorted) and each value's index."""
    names = [unknown] + sorted(set(values) - {unknown, ""})
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index.get(v, 0) for v in values], dtype=np.int64)


def _text(values: pa.Array | None, n: int) -> list[str]:
    if values is None:
        return [""] * n
    return pc.fill_null(pc.cast(values, pa.string()), "").to_pylist()


def _users_table(mapping: Mapping, user_keys: list[str], report: Report):
    """(users table, occupations, user IdMap, provisional code -> dense id); `user_keys` are the
    interactions' users in order of first sight (their provisional codes)."""
    keys, values = importer.read_users(mapping.users) if mapping.users else ([], {})
    listed = set(keys)
    extra = [k for k in user_keys if k not in listed]
    if keys and extra:
        report.notes.append(
            f"{len(extra):,} users in the interactions are not in the users file "
            "(kept, attributes unknown)"
        )
    all_keys = keys + extra
    id_map, ids = dense_ids(all_keys)
    n, n_listed = len(all_keys), len(keys)
    age = np.full(n, -1, dtype=np.int16)
    ages = _text(values.get("age"), n_listed)
    age[:n_listed] = [int(a) if a.strip().isdigit() and int(a) < 200 else -1 for a in ages]
    gender = np.zeros(n, dtype=np.int8)
    gender[:n_listed] = [
        _GENDERS.get(g.strip().lower(), 0) for g in _text(values.get("gender"), n_listed)
    ]
    occupations, occupation = _codes(
        _text(values.get("occupation"), n_listed) + [""] * len(extra), "unknown"
    )
    region = np.zeros(n, dtype=np.int32)
    if "region" in values and mapping.users is not None:  # values come from the users file
        spec = mapping.users
        tokens = [t.strip() for t in _text(values["region"], n_listed)]
        if spec.region_prefix:
            tokens = [t[: spec.region_prefix] for t in tokens]
        if spec.region_pattern:
            pattern = re.compile(spec.region_pattern)
            tokens = [t if pattern.fullmatch(t) else "" for t in tokens]
        region[:n_listed] = _codes(tokens, "")[1]
    order = np.argsort(ids)
    users = {
        "user_id": ids[order],
        "age": age[order],
        "gender": gender[order],
        "occupation": occupation.astype(np.int16)[order],
        "region": region[order],
    }
    dense_of_key = dict(zip(all_keys, ids.tolist(), strict=True))
    translate = np.array([dense_of_key.get(k, 0) for k in user_keys], dtype=np.int64)
    return users, occupations, id_map, translate


def _items_table(mapping: Mapping, item_keys: list[str], staging: Staging, report: Report):
    """(items table, category names, creators table, item IdMap, provisional code -> dense);
    `item_keys` are the interactions' items in order of first sight (their provisional codes)."""
    if mapping.items:
        keys, values = importer.read_items(mapping.items)
    else:
        keys, values = item_keys, {}
    id_map, ids = dense_ids(keys)
    n = len(keys)
    titles = _text(values.get("title"), n)
    titles = [t or k for t, k in zip(titles, keys, strict=True)]
    creators_of = dict(zip(keys, _text(values.get("creator"), n), strict=True))
    if mapping.kg:
        creators_of |= importer.read_creators_from_kg(mapping.kg)
    names = sorted({c for c in creators_of.values() if c})
    creator_index = {name: i + 1 for i, name in enumerate(names)}
    creator_id = np.array([creator_index.get(creators_of.get(k, ""), 0) for k in keys], np.int64)
    category_names, matrix = ["none"], np.zeros((n, MAX_CATEGORIES), dtype=np.int16)
    if "categories" in values and mapping.items is not None:  # values: from the items file
        delimiter = mapping.items.category_delimiter
        texts = _text(values["categories"], n)
        lists = [[g for g in s.split(delimiter) if g.strip()] for s in texts]
        category_names += sorted({g for gs in lists for g in gs})
        index = {g: i for i, g in enumerate(category_names)}
        wide = sum(len(gs) > MAX_CATEGORIES for gs in lists)
        if wide:
            report.notes.append(
                f"{wide:,} items have more than {MAX_CATEGORIES} categories "
                f"(the first {MAX_CATEGORIES} kept)"
            )
        for row, gs in enumerate(lists):
            codes = [index[g] for g in gs][:MAX_CATEGORIES]
            matrix[row, : len(codes)] = codes
    dense_of_key = dict(zip(keys, ids.tolist(), strict=True))
    translate = np.array([dense_of_key.get(k, 0) for k in item_keys], dtype=np.int64)
    if "upload_ts" in values:
        upload = np.asarray(values["upload_ts"], dtype=np.int64)
    else:  # as on ml-100k: an item enters the catalog with its first interaction
        first_of_code, ts_min = staging.first_times(len(item_keys))
        first = np.full(n + 1, ts_min, dtype=np.int64)
        first[translate] = first_of_code
        first[0] = ts_min
        upload = first[ids]
    order = np.argsort(ids)
    items = {
        "item_id": ids[order],
        "creator_id": creator_id[order],
        "categories": matrix[order],
        "upload_ts": upload[order],
        "title": np.array(titles, dtype=object)[order],
    }
    content = values.get("content")
    if content is not None and content.shape[1] > 0:  # else: creator and categories alone
        items["content"] = content[order]
    creators = {
        "creator_id": np.arange(1, len(names) + 1, dtype=np.int64),
        "user_id": np.zeros(len(names), dtype=np.int64),
        "name": np.array(names, dtype=object),
    }
    return items, category_names, creators, id_map, translate


def _event_values(mapping: Mapping) -> list[str]:
    """The event values some flag maps, sorted: a staged row's `event_code` indexes this list."""
    spec = mapping.interactions
    return sorted({v for vs in spec.events.values() for v in vs}) if spec.event else []


def _flags(mapping: Mapping) -> dict[str, Flag]:
    """When a staged row sets each flag it can set (by its event code and rating)."""
    spec = mapping.interactions
    code = {value: i for i, value in enumerate(_event_values(mapping))}
    flags = {}
    for flag, values in spec.events.items():
        if flag != "play" and spec.event:
            flags[flag] = Flag(events=tuple(code[v] for v in values))
    if spec.rating:
        flags["like"] = Flag(flags.get("like", Flag()).events, float(spec.like_threshold))
    return flags


def _note_drops(mapping: Mapping, drops: dict, unmapped: list, report: Report) -> None:
    """Reports the rows dropped for an empty id, an unmapped event value, a repeat of an earlier
    row, or an item not in the items file, in that order, each with its first line (or the first
    one an error when strict)."""
    spec = mapping.interactions
    if unmapped:
        report.notes.append(
            f"event values not mapped to {'/'.join(FLAGS)}: "
            + ", ".join(f"{v!r} x{c}" for v, c in unmapped)
        )
    reasons = {
        "user": f"empty id in column {spec.user!r}",
        "item": f"empty id in column {spec.item!r}",
        "event": f"event value not mapped (column {spec.event!r})",
        "duplicate": "duplicate row (same user, item, time, event and rating as an earlier row)",
        "unknown item": f"item not in the items file (column {spec.item!r})",
    }
    for check, (count, first) in drops.items():
        if count and first is not None:
            report.drop(reasons[check], count, spec.source.where(int(first)))


def build(
    name: str, mapping: Mapping, folder: Path, progress: bool = True
) -> tuple[Dataset, IdMap, IdMap, Report]:
    """Writes the dataset's tables into `folder` (interactions and impressions streamed out of
    core) and returns it (those two read back lazily), its user and item id maps and what was
    dropped."""
    report = Report(strict=mapping.strict)
    spec = mapping.interactions
    staging = Staging(folder / ".staging")
    started = time.perf_counter()

    def done(step: str) -> None:  # where a long import is (the benchmark reports the steps)
        report.steps[step] = round(time.perf_counter() - started, 2)
        log.info("import %s: %s after %.1f s", name, step, report.steps[step])

    interactions_path = folder / "interactions.parquet"
    try:
        if staging.load(spec, _event_values(mapping)) == 0:
            raise DataError(f"{spec.source.path} line 2: no data rows after the header")
        done("read, checked and coded")
        items, categories, creators, item_ids, item_of = _items_table(
            mapping, staging.items.keys(), staging, report
        )
        users, occupations, user_ids, user_of = _users_table(mapping, staging.users.keys(), report)
        done("dense ids assigned")
        staging.find_duplicates()
        done("duplicates found")
        drops = staging.write_interactions(interactions_path, user_of, item_of, _flags(mapping))
        _note_drops(mapping, drops, staging.unmapped, report)
        n, ts_min, ts_max, tasks = staging.kept
        if n == 0:
            raise DataError(f"{spec.source.path}: no interaction is left after dropping bad rows")
        report.interactions, report.time_span = n, (ts_min, ts_max)
        done("interactions written")
        rng = np.random.default_rng(mapping.seed)
        staging.write_impressions(
            folder / "impressions.parquet", items, mapping.negatives_per_positive, rng
        )
        done("impressions written")
    finally:
        shutil.rmtree(folder / ".staging", ignore_errors=True)
    if mapping.creator_is_user:
        creators["user_id"] = user_ids.lookup(creators["name"].tolist())
    follows = _follows(mapping, user_ids, report)
    meta = {
        "name": name,
        "categories": categories,
        "occupations": occupations,
        "tasks": tasks,
        "description": mapping.description or f"imported from {spec.source.path}",
        "negatives_per_positive": mapping.negatives_per_positive,
        "source": "import",
    }
    # The two large tables are read back a column at a time, on use.
    interactions: Any = ParquetTable(interactions_path, "interactions")
    impressions: Any = ParquetTable(folder / "impressions.parquet", "impressions")
    dataset = Dataset(users, items, creators, follows, interactions, impressions, meta)
    return dataset, user_ids, item_ids, report


def _follows(mapping: Mapping, user_ids: IdMap, report: Report) -> dict:
    empty = np.zeros(0, dtype=np.int64)
    if mapping.follows is None:
        report.notes.append("no follows: the social recall channel is off")
        return {"follower_id": empty, "followee_id": empty, "ts": empty}
    follower, followee, ts = importer.read_follows(mapping.follows)
    a = user_ids.lookup(follower.to_pylist()) if len(follower) else empty
    b = user_ids.lookup(followee.to_pylist()) if len(followee) else empty
    bad = (a == 0) | (b == 0)
    if bad.any():
        report.drop(
            "follow of a user not in the data",
            int(bad.sum()),
            mapping.follows.source.where(int(np.flatnonzero(bad)[0])),
        )
    _, first = np.unique(np.stack([a, b]), axis=1, return_index=True)
    repeated = np.ones(len(a), dtype=bool)
    repeated[first] = False
    repeated &= ~bad
    if repeated.any():
        report.drop(
            "follow listed twice (same follower and followee)",
            int(repeated.sum()),
            mapping.follows.source.where(int(np.flatnonzero(repeated)[0])),
        )
    bad |= repeated
    return {"follower_id": a[~bad], "followee_id": b[~bad], "ts": ts[~bad]}


def staging_folder(folder: Path) -> Path:
    """The temporary sibling of data/NAME an import writes into before renaming it."""
    return folder.parent / f".{folder.name}.importing-{os.getpid()}"


def publish(staging: Path, users: IdMap, items: IdMap, folder: Path) -> None:
    """Adds the id maps to a complete staging folder and renames it to `folder`, replacing an
    old dataset only once the new one is whole."""
    (staging / "ids").mkdir()
    users.save(staging / "ids" / "users.parquet")
    items.save(staging / "ids" / "items.parquet")
    old = folder.parent / f".{folder.name}.replaced-{os.getpid()}"
    if folder.exists():
        folder.rename(old)
    try:
        staging.rename(folder)
    except BaseException:
        if old.exists() and not folder.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def summary(dataset: Dataset, report: Report) -> str:
    """The table printed at the end of an import."""
    n_users, n_items = len(dataset.users["user_id"]), len(dataset.items["item_id"])
    n = report.interactions
    day = lambda s: datetime.fromtimestamp(int(s), UTC).strftime("%Y-%m-%d")  # noqa: E731
    rows = [
        ("users", f"{n_users:,}"),
        ("items", f"{n_items:,}"),
        ("interactions", f"{n:,}"),
        ("time span", f"{day(report.time_span[0])} .. {day(report.time_span[1])}"),
        ("density", f"{n / max(n_users * n_items, 1):.4%}"),
        ("creators", f"{len(dataset.creators['creator_id']):,}"),
        ("categories", f"{len(dataset.meta['categories']) - 1:,}"),
        ("follows", f"{len(dataset.follows['follower_id']):,}"),
        ("tasks", ", ".join(dataset.meta["tasks"])),
    ]
    rows += [
        ("dropped", f"{c:,} rows: {r}; first at {report.first[r]}")
        for r, c in report.dropped.items()
    ]
    rows += [("note", note) for note in report.notes]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def import_dataset(
    name: str, mapping: Mapping, data_dir: Path, force: bool = False, progress: bool = True
) -> tuple[Dataset, Report]:
    """Reads, checks, maps and writes data_dir/NAME atomically; DataError on bad input."""
    if not NAME_PATTERN.fullmatch(name) or name in ("raw",):
        raise DataError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-' (not 'raw')")
    folder = Path(data_dir) / name
    if folder.exists() and not force:
        raise DataError(f"{folder} exists: choose another --name or pass --force to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        dataset, users, items, report = build(name, mapping, staging, progress)
        dataset.meta["import"] = {"dropped": dict(report.dropped), "notes": report.notes}
        save(dataset, staging, written=("interactions", "impressions"))
        publish(staging, users, items, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for table in ("interactions", "impressions"):  # read back from where they now are
        setattr(dataset, table, ParquetTable(folder / f"{table}.parquet", table))
    return dataset, report
