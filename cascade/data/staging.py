"""The interactions of `cascade data import`, read, checked, mapped and written inside DuckDB.

The file goes once through DuckDB's parallel reader into table `raw` (a row's place in the file is
its rowid). Every later step is a SQL statement over whole columns: the first bad value is found by
a query and named by its line or row and column, ids become provisional codes through dictionary
tables (one row per distinct id), duplicates are found by grouping on a hash, and the result goes
from DuckDB straight to Parquet. Past `memory_limit` DuckDB spills tables, joins, aggregations
and sorts to the scratch folder, so memory stays bounded whatever the file's size
(`python -m bench.import_scale` measures it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cascade.data.mapping import Interactions
from cascade.data.ml100k import sample_impressions
from cascade.data.schema import SCHEMA, DataError, arrow_table
from cascade.data.tabular import Source, quoted, sql_text

MEMORY_LIMIT = "768MB"  # DuckDB's working memory; past it tables, joins and sorts spill
SLICE_ROWS = 2_000_000  # interactions per impression-sampling slice (whole users per slice)
PARTITION_ROWS = 1_000_000  # interactions read at once to spread over the slices
HASH_SLICE_ROWS = 20_000_000  # row hashes sorted at once to find repeats (8 bytes each)
EVENT_FLAGS = ("complete", "like", "share")  # `play` is every interaction
VALID = "user_id >= 0 AND item_code >= 0 AND event_code >= 0"  # no empty id or unmapped event
KEPT = f"{VALID} AND NOT duplicate AND item_id > 0"  # the rows written: known items, no repeats


class Staging:
    """One import's interactions in an in-memory DuckDB database that spills to `scratch`."""

    def __init__(self, scratch: Path, memory_limit: str = MEMORY_LIMIT) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(":memory:")
        self.scratch = scratch
        self.unmapped: list[tuple[str, int]] = []  # set by encode
        self.kept: tuple[int, int, int, list[str]] = (0, 0, 0, [])  # set by drops
        self.con.execute("SET enable_progress_bar = false")
        self.con.execute(f"SET memory_limit = {sql_text(memory_limit)}")
        self.con.execute(f"SET temp_directory = {sql_text(str(scratch / 'spill'))}")
        self.con.execute(f"SET threads = {os.cpu_count() or 1}")
        # Scans keep the file's order, so a table's rowid is the row's place in the file.
        self.con.execute("SET preserve_insertion_order = true")

    def close(self) -> None:
        self.con.close()

    def one(self, query: str) -> tuple:
        row = self.con.execute(query).fetchone()
        assert row is not None
        return row

    def load(self, spec: Interactions) -> int:
        """Table `raw` (user, item, event as text; ts as Unix seconds; rating) from the
        interactions file; the first malformed line or unparsable value is a DataError naming
        its line or row and column."""
        source = spec.source
        roles = {spec.user: "user", spec.item: "item", spec.time: "time"}
        roles |= {c: r for r, c in (("event", spec.event), ("rating", spec.rating)) if c}
        source.require(list(roles), roles)
        time_what = {
            "unix": "a Unix time in seconds",
            "unix_ms": "a Unix time in milliseconds",
        }.get(spec.time_format, f"a time in the format {spec.time_format!r}")
        numeric = {spec.rating: "a number"} if spec.rating else {}  # column -> what it holds
        if spec.time_format in ("unix", "unix_ms"):
            numeric[spec.time] = time_what  # parsed by the reader: a bad value is a reject
        scan = source.scan({column: "DOUBLE" for column in numeric})
        columns = {
            "user": source.key_sql(spec.user),
            "item": source.key_sql(spec.item),
            "ts": source.time_sql(spec.time, spec.time_format),
            "event": source.key_sql(spec.event) if spec.event else "''",
            "rating": source.number_sql(spec.rating) if spec.rating else "NULL::FLOAT",
        }
        select = ", ".join(f"{sql} AS {name}" for name, sql in columns.items())
        try:
            self.con.execute(f"CREATE TABLE raw AS SELECT {select} FROM {scan}")
        except duckdb.Error as error:
            raise DataError(f"{source.path}: cannot be read as {source.kind} ({error})") from None
        self._raise_rejected(source, numeric)
        (missing,) = self.one("SELECT min(rowid) FROM raw WHERE ts IS NULL")
        if missing is not None:
            self._raise_unparsed(source, spec.time, int(missing), time_what, "no time given")
        if spec.rating and source.needs_parse(spec.rating):  # text ratings in a Parquet file
            row = source.first_unparsed_number(self.con, spec.rating)
            if row is not None:
                self._raise_unparsed(source, spec.rating, row, "a number", "")
        return int(self.one("SELECT count(*) FROM raw")[0])

    def _raise_rejected(self, source: Source, numeric: dict[str, str]) -> None:
        """The reader's first rejected line (CSV): a wrong number of fields or a bad number
        (`numeric`: the columns the reader parses -> what they hold)."""
        if source.kind == "parquet":
            return
        first = self.con.execute(
            "SELECT line, column_idx, column_name, error_type, csv_line, error_message "
            "FROM reject_errors ORDER BY line LIMIT 1"
        ).fetchone()
        if first is None:
            return
        line, index, column, kind, text, message = first
        where = f"{source.path} line {line}"
        if kind == "CAST" and column in numeric:
            value = source.split(text)[index - 1] if text else ""
            raise DataError(
                f"{where}, column {column!r}: cannot parse {value!r} as {numeric[column]}"
            )
        if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS", "UNQUOTED VALUE"):
            raise DataError(
                f"{where}: expected {len(source.header())} fields separated by "
                f"{source.delimiter!r} like the header; check the delimiter and quoting"
            )
        raise DataError(f"{where}: cannot be read as CSV ({message})")

    def _raise_unparsed(self, source: Source, column: str, row: int, what: str, empty: str):
        value = source.value_at(self.con, column, row)
        if (value is None or not value.strip()) and empty:
            raise DataError(f"{source.where(row)}, column {column!r}: {empty}")
        raise DataError(f"{source.where(row)}, column {column!r}: cannot parse {value!r} as {what}")

    def keys(self, column: str) -> list[str]:
        """The distinct non-empty ids of raw.`column` in order of first sight; their index is the
        provisional code kept in table `{column}_codes` (raw text -> code, -1 for an empty id,
        with the earliest time of its rows)."""
        self.con.execute(
            f"CREATE TABLE {column}_seen AS SELECT {column} AS text, trim({column}) AS key, "
            f"min(rowid) AS first, min(ts) AS first_ts FROM raw GROUP BY {column}"
        )
        self.con.execute(
            f"CREATE TABLE {column}_keys AS SELECT key, row_number() OVER (ORDER BY first) - 1 "
            f"AS code, first_ts FROM (SELECT key, min(first) AS first, min(first_ts) AS first_ts "
            f"FROM {column}_seen WHERE key <> '' GROUP BY key)"
        )
        self.con.execute(
            f"CREATE TABLE {column}_codes AS SELECT s.text, coalesce(k.code, -1) AS code "
            f"FROM {column}_seen s LEFT JOIN {column}_keys k ON s.key = k.key"
        )
        table = self.con.execute(f"SELECT key FROM {column}_keys ORDER BY code").fetch_arrow_table()
        return table.column("key").to_pylist()

    def first_times(self, n_items: int) -> tuple[np.ndarray, int]:
        """Each provisional item code's earliest time among its rows, and the earliest time of
        all rows."""
        (ts_min,) = self.one("SELECT min(first_ts) FROM item_keys")
        first = np.full(n_items, ts_min, dtype=np.int64)
        table = self.con.execute("SELECT code, first_ts FROM item_keys").fetch_arrow_table()
        first[table.column("code").to_numpy()] = table.column("first_ts").to_numpy()
        return first, int(ts_min)

    def encode(
        self, user_of: np.ndarray, item_of: np.ndarray, events: list[str], top: int = 5
    ) -> None:
        """Table `coded`: raw with dense user ids (`user_of`: provisional code -> id), item codes
        and dense ids (`item_of`; 0: not in the items file), event codes (the index in
        `events`), -1 for an empty id or an unmapped event value, and `duplicate` marking rows
        that repeat an earlier row's user, item, time, event and rating. Drops `raw`: from here on
        every column is a number. The most frequent unmapped event values go to `self.unmapped`
        (value, rows)."""
        for column, dense in (("user", user_of), ("item", item_of)):
            codes = np.arange(len(dense), dtype=np.int64)
            self.con.register(f"{column}_dense", pa.table({"code": codes, "dense": dense}))
            self.con.execute(
                f"CREATE TABLE {column}_ids AS SELECT c.text, c.code, coalesce(d.dense, -1) AS id "
                f"FROM {column}_codes c LEFT JOIN {column}_dense d ON c.code = d.code"
            )
            self.con.unregister(f"{column}_dense")
        self.con.register("events", pa.table({"key": events, "code": range(len(events))}))
        self.con.execute(
            "CREATE TABLE event_seen AS SELECT event AS text, count(*) AS n, min(rowid) AS first "
            "FROM raw GROUP BY event"
        )
        self.con.execute(
            "CREATE TABLE event_codes AS SELECT s.text, coalesce(e.code, -1) AS code "
            "FROM event_seen s LEFT JOIN events e ON trim(s.text) = e.key"
        )
        self.con.unregister("events")
        self.unmapped = [
            (str(text), int(n))
            for text, n in self.con.execute(
                "SELECT s.text, s.n FROM event_seen s JOIN event_codes c ON s.text = c.text "
                f"WHERE c.code < 0 ORDER BY s.n DESC, s.first LIMIT {top}"
            ).fetchall()
        ]
        # The few texts that map to an event value, as a CASE: no join over the log for them.
        mapped = self.con.execute("SELECT text, code FROM event_codes WHERE code >= 0").fetchall()
        branches = " ".join(f"WHEN {sql_text(text)} THEN {code}" for text, code in mapped)
        event = "0" if not events else f"CASE r.event {branches} ELSE -1 END" if mapped else "-1"
        # Four-byte ids and a two-byte event: the table every later step scans stays small.
        self.con.execute(
            "CREATE TABLE coded AS SELECT r.rowid AS row, "
            "CAST(coalesce(u.id, -1) AS INTEGER) AS user_id, "
            "CAST(coalesce(i.code, -1) AS INTEGER) AS item_code, "
            "CAST(coalesce(i.id, 0) AS INTEGER) AS item_id, r.ts, "
            f"CAST({event} AS SMALLINT) AS event_code, r.rating FROM raw r "
            "LEFT JOIN user_ids u ON r.user = u.text LEFT JOIN item_ids i ON r.item = i.text"
        )
        self.con.execute("DROP TABLE raw")
        # Rows that repeat one another share a hash. The hashes are sorted in numpy, a slice of
        # them at a time (a hash aggregate with a group per row is many times slower); only the
        # rows of a repeated hash are then compared exactly (rating: NaN equals NaN). The repeats
        # go to a small table that the later scans join against: the large one is never updated.
        columns = "user_id, item_code, ts, event_code, coalesce(rating, 'NaN')"
        (n,) = self.one("SELECT count(*) FROM coded")
        slices = max(1, math.ceil(n / HASH_SLICE_ROWS))
        repeated = [np.empty(0, dtype=np.uint64)]
        for part in range(slices):
            where = f" AND hash({columns}) % {slices} = {part}" if slices > 1 else ""
            hashes = self.con.execute(
                f"SELECT hash({columns}) AS h FROM coded WHERE {VALID}{where}"
            ).fetch_arrow_table()
            h = np.sort(hashes.column("h").to_numpy())
            repeated.append(np.unique(h[1:][h[1:] == h[:-1]]))
        self.con.register("repeated", pa.table({"h": np.concatenate(repeated)}))
        self.con.execute(
            "CREATE TABLE duplicates AS SELECT row FROM (SELECT row, "
            f"row_number() OVER (PARTITION BY {columns} ORDER BY row) AS n FROM coded "
            f"WHERE {VALID} AND hash({columns}) IN (SELECT h FROM repeated)) WHERE n > 1"
        )
        self.con.unregister("repeated")
        self.con.execute(
            "CREATE VIEW checked AS SELECT c.*, d.row IS NOT NULL AS duplicate "
            "FROM coded c LEFT JOIN duplicates d ON c.row = d.row"
        )

    def drops(self, flags: dict[str, str]) -> dict[str, tuple[int, int | None]]:
        """(count, first row) of the rows each check drops, each counted among the rows the
        checks before it kept: empty user, empty item, unmapped event, duplicate, item not in
        the items file. The same scan sets `self.kept`: (interactions, first time, last time,
        tasks) of the rows kept (`flags`: SQL over `event_code` and `rating`)."""
        checks = {
            "user": "user_id < 0",
            "item": "user_id >= 0 AND item_code < 0",
            "event": "user_id >= 0 AND item_code >= 0 AND event_code < 0",
            "duplicate": f"{VALID} AND duplicate",
            "unknown item": f"{VALID} AND NOT duplicate AND item_id = 0",
        }
        parts = [f"count(*) FILTER ({sql}), min(row) FILTER ({sql})" for sql in checks.values()]
        parts += [f"{f}(ts) FILTER ({KEPT})" for f in ("count", "min", "max")]
        parts += [f"bool_or({flags.get(f, 'FALSE')}) FILTER ({KEPT})" for f in EVENT_FLAGS]
        values = self.one(f"SELECT {', '.join(parts)} FROM checked")
        n, ts_min, ts_max, *has = values[2 * len(checks) :]
        tasks = ["play"] + [f for f, yes in zip(EVENT_FLAGS, has, strict=True) if yes]
        self.kept = (int(n), int(ts_min or 0), int(ts_max or 0), tasks)
        return {name: (int(values[2 * i]), values[2 * i + 1]) for i, name in enumerate(checks)}

    def write_interactions(self, path: Path, flags: dict[str, str]) -> None:
        """interactions.parquet: the kept rows of known items in the file's order, with their
        flags (SQL over `event_code` and `rating`)."""
        self.con.execute(
            "COPY (SELECT CAST(user_id AS BIGINT) AS user_id, CAST(item_id AS BIGINT) AS item_id, "
            f"ts, TRUE AS play, {_flag_sql(flags)}, coalesce(rating, 'NaN')::FLOAT AS rating "
            f"FROM checked WHERE {KEPT} ORDER BY row) TO {sql_text(str(path))} (FORMAT parquet)"
        )

    def write_impressions(
        self, path: Path, interactions: Path, items: dict, k: int, rng: np.random.Generator
    ) -> int:
        """impressions.parquet: each interaction of `interactions` (the written file, in the
        file's order) and k sampled negatives, one slice of users at a time (one slice, as for
        any log up to SLICE_ROWS interactions, is the whole log). The log is first read once and
        each slice's rows appended, in order, to a file of its own (no sort over the log); each
        slice is then read alone, sampled, and written while the next one is sampled."""
        self.close()  # DuckDB is done with: its memory goes back before the slices take theirs
        log = pq.ParquetFile(interactions)
        slices = max(1, math.ceil(log.metadata.num_rows / SLICE_ROWS))
        folder = self.scratch / "slices"
        folder.mkdir(parents=True, exist_ok=True)
        files = _partition(log, slices, folder)
        written = 0
        with (
            # Ids are too many for dictionary pages, and the table is read whole, column by
            # column (no statistics to skip pages by): plain pages write fastest.
            pq.ParquetWriter(
                path, IMPRESSIONS_SCHEMA, use_dictionary=False, write_statistics=False
            ) as writer,
            ThreadPoolExecutor(max_workers=1) as pool,  # Parquet's writer releases the GIL
        ):
            pending: Future[None] | None = None
            for file, blocks in files:
                slice_log = _read_slice(file, blocks)
                table = arrow_table(sample_impressions(slice_log, items, k, rng), "impressions")
                if pending is not None:
                    pending.result()  # one slice in flight: memory stays bounded
                pending = pool.submit(writer.write_table, table)
                written += table.num_rows
            if pending is not None:
                pending.result()
        return written


# The columns the impression sampler reads, as a slice's file holds them: blocks of rows, each the
# block's values of one column after another (the flags as bits of one byte), so that a slice's rows
# go there by appending bytes and come back with one read.
LOG_COLUMNS = {"user_id": np.int64, "item_id": np.int64, "ts": np.int64, "flags": np.uint8}
IMPRESSIONS_SCHEMA = pa.schema(
    [(c, pa.from_numpy_dtype(np.dtype(t))) for c, (t, _) in SCHEMA["impressions"].items()]
)


def _partition(log: pq.ParquetFile, slices: int, folder: Path) -> list[tuple[Path, list[int]]]:
    """Appends each row of `log` to the file of slice user_id % slices, keeping the file's order
    within each (a stable sort of each batch by slice: radix for a small slice number); each
    slice's file and the rows of each block in it."""
    files: list[tuple[Path, list[int]]] = [(folder / f"{p}.log", []) for p in range(slices)]
    names = ["user_id", "item_id", "ts", *EVENT_FLAGS]
    handles = [path.open("wb") for path, _ in files]
    try:
        for batch in _batches(log, names):
            values = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in names}
            values["flags"] = np.zeros(batch.num_rows, dtype=np.uint8)
            for bit, flag in enumerate(EVENT_FLAGS):
                values["flags"] |= values.pop(flag).astype(np.uint8) << bit
            part = (values["user_id"] % slices).astype(np.min_scalar_type(slices - 1))
            order = np.argsort(part, kind="stable")
            ordered = [column[order] for column in values.values()]
            ends = np.cumsum(np.bincount(part, minlength=slices)).tolist()
            for handle, (_, blocks), start, end in zip(
                handles, files, [0, *ends[:-1]], ends, strict=True
            ):
                if end > start:
                    for column in ordered:
                        column[start:end].tofile(handle)
                    blocks.append(end - start)
    finally:
        for handle in handles:
            handle.close()
    return files


def _batches(log: pq.ParquetFile, names: list[str]) -> Iterator[pa.Table]:
    """`log`'s rows in batches of PARTITION_ROWS, read a row group at a time (pyarrow's
    iter_batches holds on to what it read: 1.5 GB over 100M interactions)."""
    rest = log.schema_arrow.empty_table().select(names)
    for group in range(log.num_row_groups):
        rest = pa.concat_tables([rest, log.read_row_group(group, columns=names)])
        while rest.num_rows >= PARTITION_ROWS:
            yield rest.slice(0, PARTITION_ROWS)
            rest = rest.slice(PARTITION_ROWS)
    if rest.num_rows:
        yield rest


def _read_slice(path: Path, blocks: list[int]) -> dict[str, np.ndarray]:
    """One slice's interactions that `_partition` wrote (`blocks`: rows per block), as the
    sampler's columns; the file goes."""
    data = np.fromfile(path, dtype=np.uint8)
    path.unlink()
    parts: dict[str, list[np.ndarray]] = {c: [] for c in LOG_COLUMNS}
    at = 0
    for rows in blocks:
        for column, dtype in LOG_COLUMNS.items():
            size = rows * np.dtype(dtype).itemsize
            parts[column].append(data[at : at + size].view(dtype))
            at += size
    log = {c: np.concatenate(p) if p else np.zeros(0, LOG_COLUMNS[c]) for c, p in parts.items()}
    flags = log.pop("flags")
    for bit, flag in enumerate(EVENT_FLAGS):
        log[flag] = (flags >> bit) & 1 == 1
    return log


def _flag_sql(flags: dict[str, str]) -> str:
    """The flag columns (`flags`: SQL over `event_code` and `rating`; FALSE where none, and
    where a comparison with an empty rating is unknown)."""
    return ", ".join(
        f"coalesce({flags.get(f, 'FALSE')}, FALSE) AS {quoted(f)}" for f in EVENT_FLAGS
    )
