"""The interactions of `cascade data import`, staged out of core in DuckDB.

Checked batches (cascade.data.importer.interaction_batches) stream into a DuckDB database in a
scratch folder under a memory limit. The id tables, duplicate removal (a hash aggregation) and
the final sort by file row are DuckDB operators that spill to that folder past the limit, so the
import's memory stays bounded whatever the file's size; the result goes from DuckDB straight to
Parquet. Every row keeps its place in the file (`row`), so each drop still names its first line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cascade.data.importer import STAGED, Report
from cascade.data.ml100k import sample_impressions
from cascade.data.schema import SCHEMA, DataError, arrow_table
from cascade.data.tabular import Source

MEMORY_LIMIT = "768MB"  # DuckDB's working memory; past it joins, aggregations and sorts spill
SLICE_ROWS = 2_000_000  # interactions per impression-sampling slice (whole users per slice)
EVENT_FLAGS = ("complete", "like", "share")  # `play` is every interaction


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Staging:
    """One import's interactions in a DuckDB database under `scratch` (removed by the caller)."""

    def __init__(self, scratch: Path, memory_limit: str = MEMORY_LIMIT) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        # In memory, spilling to `scratch` past the limit: no database file to write and check.
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET enable_progress_bar = false")
        self.con.execute(f"SET memory_limit = {sql_text(memory_limit)}")
        self.con.execute(f"SET temp_directory = {sql_text(str(scratch / 'spill'))}")
        self.con.execute(f"SET threads = {os.cpu_count() or 1}")
        self.con.execute("SET preserve_insertion_order = false")  # order comes from `row`

    def close(self) -> None:
        self.con.close()

    def one(self, query: str) -> tuple:
        row = self.con.execute(query).fetchone()
        assert row is not None
        return row

    def load(self, batches: Iterator[pa.RecordBatch]) -> int:
        """Stages every batch as table `raw`; a DataError from the reader is raised as it is."""
        failure: list[BaseException] = []

        def checked() -> Iterator[pa.RecordBatch]:
            try:
                yield from batches
            except BaseException as error:  # DuckDB wraps it: keep it to raise unchanged
                failure.append(error)
                raise

        self.con.register("incoming", pa.RecordBatchReader.from_batches(STAGED, checked()))
        try:
            self.con.execute("CREATE TABLE raw AS SELECT * FROM incoming")
        except Exception:
            if failure:
                raise failure[0] from None
            raise
        finally:
            self.con.unregister("incoming")
        return int(self.one("SELECT count(*) FROM raw")[0])

    def keys(self, column: str) -> list[str]:
        """The distinct non-empty values of raw.`column` in order of first sight; their index is
        the provisional code kept in table `{column}_keys`."""
        self.con.execute(
            f"CREATE TABLE {column}_keys AS SELECT key, row_number() OVER (ORDER BY first) - 1 "
            f"AS code FROM (SELECT {column} AS key, min(row) AS first FROM raw "
            f"WHERE {column} <> '' GROUP BY {column})"
        )
        table = self.con.execute(f"SELECT key FROM {column}_keys ORDER BY code").fetch_arrow_table()
        return table.column("key").to_pylist()

    def drop(self, report: Report, where: str, reason: str, source: Source) -> None:
        """Drops the rows of raw matching `where`, counted in `report` with the first one."""
        count, first = self.one(f"SELECT count(*), min(row) FROM raw WHERE {where}")
        if count:
            report.drop(reason, int(count), source.where(int(first)))
            self.con.execute(f"DELETE FROM raw WHERE {where}")

    def top_values(self, column: str, where: str, first_rows: int, top: int) -> list[tuple]:
        """(value, count) of the most frequent values among the first rows matching `where`."""
        return self.con.execute(
            f"SELECT {column}, count(*) AS n FROM (SELECT {column}, row FROM raw WHERE {where} "
            f"ORDER BY row LIMIT {first_rows}) GROUP BY {column} ORDER BY n DESC, min(row) "
            f"LIMIT {top}"
        ).fetchall()

    def remove_duplicates(self, report: Report, source: Source) -> None:
        """Table `kept`: raw without rows repeating an earlier row's user, item, time, event and
        rating exactly (a hash aggregation on the provisional codes, out of core)."""
        self.con.execute(
            "CREATE TABLE kept AS SELECT min(r.row) AS row, u.code AS user, i.code AS item, "
            "r.ts, r.event, r.rating FROM raw r JOIN user_keys u ON r.user = u.key "
            "JOIN item_keys i ON r.item = i.key GROUP BY u.code, i.code, r.ts, r.event, r.rating"
        )
        (total,) = self.one("SELECT count(*) FROM raw")
        (kept,) = self.one("SELECT count(*) FROM kept")
        if total > kept:
            (first,) = self.one("SELECT min(row) FROM raw WHERE row NOT IN (SELECT row FROM kept)")
            report.drop(
                "duplicate row (same user, item, time, event and rating as an earlier row)",
                int(total - kept),
                source.where(int(first)),
            )

    def first_times(self, n_items: int) -> tuple[np.ndarray, int]:
        """Each provisional item code's earliest time among the kept rows (the earliest of all
        where an item has none), and that earliest time."""
        (ts_min,) = self.one("SELECT min(ts) FROM kept")
        first = np.full(n_items, ts_min, dtype=np.int64)
        table = self.con.execute(
            "SELECT item, min(ts) AS ts FROM kept GROUP BY item"
        ).fetch_arrow_table()
        first[table.column("item").to_numpy()] = table.column("ts").to_numpy()
        return first, int(ts_min)

    def drop_unknown_items(
        self, item_of: np.ndarray, report: Report, source: Source, item_column: str
    ) -> None:
        """Counts the kept rows whose item has no dense id (`item_of`: code -> id, 0 = not in
        the items file); map_ids leaves them out."""
        codes = pa.array(np.arange(len(item_of), dtype=np.int64))
        self.con.register("item_map", pa.table({"code": codes, "dense": pa.array(item_of)}))
        count, first = self.one(
            "SELECT count(*), min(k.row) FROM kept k JOIN item_map m ON k.item = m.code "
            "WHERE m.dense = 0"
        )
        if count:
            report.drop(
                f"item not in the items file (column {item_column!r})",
                int(count),
                source.where(int(first)),
            )

    def map_ids(
        self, user_of: np.ndarray, flags: dict[str, str], report: Report, source: Source
    ) -> None:
        """Table `interactions`: the kept rows of known items with dense ids (`user_of`: code ->
        id) and their flags (SQL over `event` and `rating`)."""
        codes = pa.array(np.arange(len(user_of), dtype=np.int64))
        self.con.register("user_map", pa.table({"code": codes, "dense": pa.array(user_of)}))
        columns = ", ".join(f'{flags.get(f, "FALSE")} AS "{f}"' for f in EVENT_FLAGS)
        self.con.execute(
            "CREATE TABLE interactions AS SELECT k.row, um.dense AS user_id, im.dense AS item_id, "
            f"k.ts, TRUE AS play, {columns}, k.rating FROM kept k "
            "JOIN user_map um ON k.user = um.code JOIN item_map im ON k.item = im.code "
            "WHERE im.dense > 0"
        )
        for name in ("user_map", "item_map"):
            self.con.unregister(name)
        n, ts_min, ts_max = self.one("SELECT count(*), min(ts), max(ts) FROM interactions")
        if n == 0:
            raise DataError(f"{source.path}: no interaction is left after dropping bad rows")
        report.interactions, report.time_span = int(n), (int(ts_min), int(ts_max))

    def tasks(self) -> list[str]:
        """`play` and the event flags that some interaction has."""
        present = self.one(
            "SELECT " + ", ".join(f'bool_or("{f}")' for f in EVENT_FLAGS) + " FROM interactions"
        )
        return ["play"] + [f for f, has in zip(EVENT_FLAGS, present, strict=True) if has]

    def write_interactions(self, path: Path) -> None:
        """interactions.parquet in the file's order, sorted out of core by DuckDB."""
        columns = ", ".join(f'"{c}"' for c in SCHEMA["interactions"])
        self.con.execute(
            f"COPY (SELECT {columns} FROM interactions ORDER BY row) "
            f"TO {sql_text(str(path))} (FORMAT parquet)"
        )

    def write_impressions(self, path: Path, items: dict, k: int, rng: np.random.Generator) -> int:
        """impressions.parquet: each interaction and k sampled negatives, one slice of users at a
        time (one slice, as for any file up to SLICE_ROWS interactions, is the whole log)."""
        (n,) = self.one("SELECT count(*) FROM interactions")
        slices = max(1, math.ceil(n / SLICE_ROWS))
        columns = ("user_id", "item_id", "ts", "complete", "like", "share")
        quoted = ", ".join(f'"{c}"' for c in columns)
        writer: pq.ParquetWriter | None = None
        written = 0
        try:
            for part in range(slices):
                where = f"WHERE user_id % {slices} = {part}" if slices > 1 else ""
                table = self.con.execute(
                    f"SELECT {quoted} FROM interactions {where} ORDER BY row"
                ).fetch_arrow_table()
                log = {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}
                impressions = arrow_table(sample_impressions(log, items, k, rng), "impressions")
                writer = writer or pq.ParquetWriter(path, impressions.schema)
                writer.write_table(impressions)
                written += impressions.num_rows
        finally:
            if writer is not None:
                writer.close()
        return written
