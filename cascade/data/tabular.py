"""Reading a user's files for `cascade data import`: CSV, Parquet and RecBole atomic files.

Files are streamed in record batches (pyarrow.csv.open_csv, ParquetFile.iter_batches), so memory
follows the columns kept, not the file's size. Every problem names the file, the line (CSV: the
header is line 1) or row (Parquet) and the column, so a user can open the file and fix it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cascade.data.schema import DataError
from cascade.progress import Progress

BATCH_BYTES = 16 << 20  # CSV block size: one batch holds about this much text
PROGRESS_BYTES = 32 << 20  # files at least this large get a progress bar
_DELIMITERS = (",", ";", "\t", "|")


@dataclass
class Source:
    """One input file and how to read it. `kind`: csv, parquet or atomic (RecBole, typed header)."""

    path: Path
    kind: str = "csv"
    delimiter: str = ","
    # A RecBole header `rating:float` names the column `rating`; the type is kept here.
    atomic_types: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, path: Path, kind: str | None = None, delimiter: str | None = None) -> Source:
        path = Path(path)
        suffix = path.suffix.lower()
        if kind is None:
            kind = "parquet" if suffix in (".parquet", ".pq") else "csv"
            kind = "atomic" if suffix in (".inter", ".user", ".item", ".kg", ".link") else kind
        if delimiter is None:
            delimiter = "\t" if kind == "atomic" or suffix in (".tsv", ".tab") else ","
        if kind not in ("csv", "parquet", "atomic"):
            raise DataError(f"{path}: unknown format {kind!r}; one of csv, parquet, atomic")
        return cls(path, kind, delimiter)

    def where(self, row: int) -> str:
        """Where 0-based data row `row` sits in the file, as a person would look for it."""
        if self.kind == "parquet":
            return f"{self.path} row {row + 1}"
        return f"{self.path} line {row + 2}"  # the header is line 1

    def header(self) -> list[str]:
        """Column names; errors for a missing or empty file and a likely wrong delimiter."""
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        if self.kind == "parquet":
            try:
                return pq.ParquetFile(self.path).schema_arrow.names
            except (pa.ArrowException, OSError) as error:
                raise DataError(f"{self.path}: not a readable Parquet file ({error})") from None
        with self.path.open(newline="", encoding="utf-8", errors="replace") as handle:
            first = handle.readline().rstrip("\r\n")
        if not first.strip():
            raise DataError(f"{self.path} line 1: the file is empty (no header line)")
        quoting: Literal[0, 3] = csv.QUOTE_NONE if self.kind == "atomic" else csv.QUOTE_MINIMAL
        names = next(csv.reader([first], delimiter=self.delimiter, quoting=quoting))
        if len(names) == 1:
            others = [d for d in _DELIMITERS if d != self.delimiter and d in first]
            if others:
                raise DataError(
                    f"{self.path} line 1: the header is one column {first[:60]!r}; the delimiter "
                    f"is {self.delimiter!r} but the line contains {others[0]!r} (set delimiter)"
                )
        if self.kind == "atomic":
            typed = [n.split(":", 1) for n in names]
            if any(len(t) != 2 for t in typed):
                raise DataError(f"{self.path} line 1: a RecBole header names `field:type` columns")
            self.atomic_types = {n: t for n, t in typed}
            return [n for n, _ in typed]
        return names

    def require(self, columns: Sequence[str], what: dict[str, str] | None = None) -> None:
        """DataError naming the first configured column the header lacks."""
        names = self.header()
        for column in columns:
            if column not in names:
                role = f" (the {what[column]})" if what and column in what else ""
                raise DataError(
                    f"{self.path} line 1, column {column!r}{role}: not in the header "
                    f"(found {', '.join(repr(n) for n in names[:12])})"
                )

    def scan(self, numeric: dict[str, str]) -> str:
        """A DuckDB table function over the whole file. CSV: every column is text but those in
        `numeric` (name -> SQL type), which the reader parses; a malformed line or a bad number
        goes to DuckDB's reject_errors table with its line and column."""
        path = sql_text(str(self.path))
        if self.kind == "parquet":
            return f"read_parquet({path})"
        names = self.header()
        types = ", ".join(f"{sql_text(n)}: {sql_text(numeric.get(n, 'VARCHAR'))}" for n in names)
        quote = "''" if self.kind == "atomic" else "'\"'"
        return (
            f"read_csv({path}, header = true, auto_detect = false, columns = {{{types}}}, "
            f"delim = {sql_text(self.delimiter)}, quote = {quote}, escape = {quote}, "
            "strict_mode = true, null_padding = false, store_rejects = true)"
        )

    def arrow_type(self, column: str) -> pa.DataType:
        """A column's type as stored: text for CSV, the schema's for Parquet."""
        if self.kind != "parquet":
            return pa.string()
        return pq.ParquetFile(self.path).schema_arrow.field(column).type

    def key_sql(self, column: str) -> str:
        """SQL for an id column as external-id text (ints and their decimal strings agree)."""
        kind = self.arrow_type(column)
        if pa.types.is_floating(kind):  # a float id column (pandas' int-with-NaN habit)
            return f"CAST(CAST(trunc({quoted(column)}) AS BIGINT) AS VARCHAR)"
        return f"CAST({quoted(column)} AS VARCHAR)"

    def needs_parse(self, column: str) -> bool:
        """Whether a Parquet column holds text where a number is wanted."""
        kind = self.arrow_type(column)
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        return self.kind == "parquet" and text

    def number_sql(self, column: str) -> str:
        """SQL for a numeric column as FLOAT (NULL when empty)."""
        if self.needs_parse(column):
            return f"TRY_CAST(NULLIF(trim({quoted(column)}), '') AS FLOAT)"
        return f"CAST({quoted(column)} AS FLOAT)"

    def time_sql(self, column: str, fmt: str) -> str:
        """SQL for Unix seconds from `unix` (seconds, may be fractional), `unix_ms` or a strptime
        format (UTC unless it carries %z); Parquet timestamps are converted as they are. NULL
        where there is no time or it does not parse."""
        name = quoted(column)
        if pa.types.is_timestamp(self.arrow_type(column)):
            return f"CAST(floor(epoch({name})) AS BIGINT)"
        if fmt in ("unix", "unix_ms"):
            seconds = f"TRY_CAST(trim({name}) AS DOUBLE)" if self.needs_parse(column) else name
            if fmt == "unix_ms":
                return f"TRY_CAST(floor({seconds} / 1000) AS BIGINT)"
            return f"TRY_CAST(trunc({seconds}) AS BIGINT)"
        parsed = f"try_strptime(trim(CAST({name} AS VARCHAR)), {sql_text(fmt)})"
        return f"CAST(floor(epoch({parsed})) AS BIGINT)"

    def value_at(self, con: duckdb.DuckDBPyConnection, column: str, row: int) -> str | None:
        """The text of `column` at 0-based data row `row` (for an error message)."""
        if self.kind == "parquet":
            scan = f"read_parquet({sql_text(str(self.path))})"
        else:
            scan = self.scan({}).replace("store_rejects = true", "ignore_errors = true")
        found = con.execute(
            f"SELECT CAST({quoted(column)} AS VARCHAR) FROM {scan} LIMIT 1 OFFSET {row}"
        ).fetchone()
        return None if found is None else found[0]

    def first_unparsed_number(self, con: duckdb.DuckDBPyConnection, column: str) -> int | None:
        """The first row of a Parquet text column whose value is not a number (empty is none)."""
        text = f"NULLIF(trim({quoted(column)}), '')"
        (row,) = con.execute(
            f"SELECT min(file_row_number) FROM read_parquet({sql_text(str(self.path))}, "
            f"file_row_number = true) WHERE {text} IS NOT NULL AND TRY_CAST({text} AS DOUBLE) "
            "IS NULL"
        ).fetchone() or (None,)
        return None if row is None else int(row)

    def split(self, line: str) -> list[str]:
        """One CSV line's fields, as this file quotes them."""
        quoting: Literal[0, 3] = csv.QUOTE_NONE if self.kind == "atomic" else csv.QUOTE_MINIMAL
        return next(csv.reader([line], delimiter=self.delimiter, quoting=quoting), [])

    def batches(self, columns: Sequence[str], progress: bool = True) -> Iterator[pa.Table]:
        """The named columns in batches, as strings for text files (typed later, with the row of
        any bad value) and as stored for Parquet. Short or long CSV rows raise with their line."""
        columns = list(dict.fromkeys(columns))
        self.require(columns)
        enabled = progress and self.path.stat().st_size >= PROGRESS_BYTES
        bar = Progress(f"import {self.path.name}", None, "rows", enabled=enabled)
        yield from (
            self._parquet(columns, bar) if self.kind == "parquet" else self._text(columns, bar)
        )
        bar.set_total(bar.n)
        bar.close()  # the summary only when the whole file was read

    def _parquet(self, columns: list[str], bar: Progress) -> Iterator[pa.Table]:
        parquet = pq.ParquetFile(self.path)
        bar.set_total(parquet.metadata.num_rows)
        for batch in parquet.iter_batches(batch_size=1 << 20, columns=columns):
            bar.update(batch.num_rows)
            yield pa.Table.from_batches([batch])

    def _text(self, columns: list[str], bar: Progress) -> Iterator[pa.Table]:
        names = self.header()
        bad_rows: list[int] = []

        def on_invalid(row) -> str:
            bad_rows.append(row.number if row.number is not None else -1)
            return "skip"

        read = pacsv.ReadOptions(
            block_size=BATCH_BYTES, column_names=names, skip_rows=1, use_threads=False
        )  # row numbers of bad rows are known only without parallel parsing
        parse = pacsv.ParseOptions(
            delimiter=self.delimiter,
            quote_char=False if self.kind == "atomic" else '"',
            invalid_row_handler=on_invalid,
        )
        convert = pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in columns},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        with self.path.open("rb") as handle:
            try:
                reader = pacsv.open_csv(handle, read, parse, convert)
            except pa.ArrowInvalid as error:
                if "Empty CSV file" in str(error):
                    return  # header only: the caller reports "no data rows"
                raise DataError(f"{self.path}: cannot be read as CSV ({error})") from None
            size = self.path.stat().st_size
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as error:
                    raise DataError(f"{self.path}: cannot be read as CSV ({error})") from None
                if bad_rows:
                    line = bad_rows[0] if bad_rows[0] >= 0 else "?"  # the file line number
                    raise DataError(
                        f"{self.path} line {line}: expected {len(names)} fields separated by "
                        f"{self.delimiter!r} like the header; check the delimiter and quoting"
                    )
                # The row count is known only at the end: estimated from the bytes read so far.
                bar.set_total(round((bar.n + batch.num_rows) * size / max(handle.tell(), 1)))
                bar.update(batch.num_rows)
                yield pa.Table.from_batches([batch])


def sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def quoted(name: str) -> str:
    """A SQL identifier (a column name as the file spells it)."""
    return '"' + name.replace('"', '""') + '"'


def as_keys(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """An id column as canonical external-id text (ints and their decimal strings agree)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_integer(values.type):
        return pc.cast(values, pa.string())
    if pa.types.is_floating(values.type):  # a float id column (pandas' int-with-NaN habit)
        return pc.cast(pc.cast(values, pa.int64(), safe=False), pa.string())
    return pc.utf8_trim_whitespace(pc.cast(values, pa.string()))


def first_bad(ok: np.ndarray) -> int:
    """Index of the first value that failed a vectorised parse (ok: per-value success)."""
    return int(np.flatnonzero(~ok)[0])


def cast_or_locate(
    source: Source, column: str, text: pa.Array, offset: int, to: pa.DataType, what: str
) -> pa.Array:
    """pc.cast of text to `to`; on failure, finds the first value that does not parse."""
    try:
        return pc.cast(text, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for row, value in enumerate(text.to_pylist()):
        try:
            pc.cast(pa.array([value], pa.string()), to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(
                f"{source.where(offset + row)}, column {column!r}: cannot parse {value!r} as {what}"
            ) from None
    raise AssertionError("a cast failed as a whole but every value parses")


def parse_times(source: Source, column: str, values: pa.Array, offset: int, fmt: str) -> np.ndarray:
    """Unix seconds from `unix` (seconds, may be fractional), `unix_ms` or a strptime format
    (UTC unless it carries %z); Parquet timestamp columns are converted as they are."""
    if pa.types.is_timestamp(values.type):
        return pc.cast(pc.cast(values, pa.timestamp("s")), pa.int64()).to_numpy(
            zero_copy_only=False
        )
    if fmt in ("unix", "unix_ms"):
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
            seconds = pc.cast(values, pa.float64())
        else:
            seconds = cast_or_locate(
                source,
                column,
                pc.utf8_trim_whitespace(values),
                offset,
                pa.float64(),
                "a Unix time" + (" in milliseconds" if fmt == "unix_ms" else " in seconds"),
            )
        out = seconds.to_numpy(zero_copy_only=False)
        if np.isnan(out).any():
            row = first_bad(~np.isnan(out))
            raise DataError(f"{source.where(offset + row)}, column {column!r}: no time given")
        return (out // 1000 if fmt == "unix_ms" else out).astype(np.int64)
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
    ok = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
    if not ok.all():
        row = first_bad(ok)
        raise DataError(
            f"{source.where(offset + row)}, column {column!r}: cannot parse "
            f"{text[row].as_py()!r} as a time in the format {fmt!r}"
        )
    return pc.cast(pc.cast(parsed, pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False)


def check_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise DataError(f"mapping: {pattern!r} is not a regular expression ({error})") from None
