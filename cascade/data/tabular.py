"""Reading a user's files for `cascade data import`: CSV, Parquet and RecBole atomic files.

Files are streamed in record batches (pyarrow.csv.open_csv, ParquetFile.iter_batches), so memory
follows the columns kept, not the file's size. Every problem names the file, the line (CSV: the
header is line 1) or row (Parquet) and the column, so a user can open the file and fix it.
"""

from __future__ import annotations

import csv
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cascade.data.schema import DataError
from cascade.progress import Progress

BATCH_BYTES = 16 << 20  # CSV block size: one batch holds about this much text
PROGRESS_BYTES = 32 << 20  # files at least this large get a progress bar
T = TypeVar("T")
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


def read_ahead(batches: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`batches`, produced by a thread of their own up to `depth` ahead: pyarrow's reader releases
    the GIL, so reading the next batch overlaps the caller's work on this one. An error while
    reading is raised to the caller."""
    queue: Queue[tuple[str, Any]] = Queue(depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        while not stop.is_set():
            try:
                queue.put((kind, value), timeout=0.1)
                return
            except Full:
                continue

    def produce() -> None:
        try:
            for batch in batches:
                put("batch", batch)
                if stop.is_set():
                    return
            put("end", None)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            put("error", error)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


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
        what = "a Unix time" + (" in milliseconds" if fmt == "unix_ms" else " in seconds")
        out = _numbers(source, column, values, offset, what)
        if out.dtype.kind == "f" and np.isnan(out).any():
            row = first_bad(~np.isnan(out))
            raise DataError(f"{source.where(offset + row)}, column {column!r}: no time given")
        return (out // 1000 if fmt == "unix_ms" else out).astype(np.int64)
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
    ok = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
    if not ok.all():
        row = first_bad(ok)
        if not text[row].as_py():
            raise DataError(f"{source.where(offset + row)}, column {column!r}: no time given")
        raise DataError(
            f"{source.where(offset + row)}, column {column!r}: cannot parse "
            f"{text[row].as_py()!r} as a time in the format {fmt!r}"
        )
    return pc.cast(pc.cast(parsed, pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False)


def parse_numbers(source: Source, column: str, values: pa.Array, offset: int) -> np.ndarray:
    """float32 values of a numeric column (text in CSV); an empty value is NaN."""
    return _numbers(source, column, values, offset, "a number").astype(np.float32)


def _numbers(source: Source, column: str, values: pa.Array, offset: int, what: str) -> np.ndarray:
    """A numeric column's values: int64 when every value is a whole number (exact, and the usual
    case), else float64 with NaN where empty. Text is trimmed; the first value that is no number
    is a DataError naming its row (`what`: what the column holds)."""
    if pa.types.is_integer(values.type) and values.null_count == 0:
        return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    text = _nonempty(values)
    try:
        whole = pc.cast(text, pa.int64())
        if whole.null_count == 0:
            return whole.to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # fractions, or a value that is no number: found below
        pass
    return cast_or_locate(source, column, text, offset, pa.float64(), what).to_numpy(
        zero_copy_only=False
    )


def _nonempty(values: pa.Array) -> pa.Array:
    """Trimmed text, null where empty."""
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def check_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise DataError(f"mapping: {pattern!r} is not a regular expression ({error})") from None
