"""The interactions of `cascade data import`: read, checked, coded and written in one stream.

The file is read once, a batch at a time (cascade.data.tabular: pyarrow's reader, each bad line or
value named by its line or row and column). In each batch the ids become provisional codes in order
of first sight (one dictionary per batch, matched against the ids seen so far inside Arrow), and
the batch goes to scratch files as fixed-width numbers in the file's order, with a 64-bit hash of
each row. Repeated rows are found by sorting the hashes (a slice at a time); only the rows that
share a hash are compared exactly. The interactions are then written from the scratch files in the
file's order, and each kept row is also appended to the file of its slice of users, which the
impression sampler reads one slice at a time. Memory follows a batch, the id dictionaries and a
slice of hashes, not the file's size (`python -m bench.import_scale` measures it).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cascade.data.mapping import Interactions
from cascade.data.ml100k import sample_impressions
from cascade.data.schema import SCHEMA, arrow_table
from cascade.data.tabular import as_keys, parse_numbers, parse_times, read_ahead

SLICE_ROWS = 2_000_000  # interactions per impression-sampling slice (whole users per slice)
WRITE_ROWS = 1_000_000  # rows written at once (one Parquet row group)
HASH_SLICE_ROWS = 20_000_000  # row hashes sorted at once to find repeats (8 bytes each)
EVENT_FLAGS = ("complete", "like", "share")  # `play` is every interaction
# A staged row as fixed-width numbers: provisional codes (-1: empty id, unmapped event value).
ROW = {"user": np.int32, "item": np.int32, "ts": np.int64, "event": np.int16, "rating": np.float32}
# Why a row is dropped, in the order the checks apply (0: kept).
DROPS = ("user", "item", "event", "duplicate", "unknown item")


@dataclass(frozen=True)
class Flag:
    """When a row sets a flag: its event value is one of `events` (indices into the mapped
    values), or its rating is at least `rating_at_least`."""

    events: tuple[int, ...] = ()
    rating_at_least: float | None = None

    def of(self, event: np.ndarray, rating: np.ndarray) -> np.ndarray:
        table = np.zeros(max(self.events, default=0) + 2, dtype=bool)  # the last: code -1
        table[list(self.events)] = True
        hit = table[np.minimum(event, len(table) - 1)]
        if self.rating_at_least is not None:
            hit |= rating >= self.rating_at_least  # an empty rating (NaN) compares false
        return hit


class Codes:
    """Provisional codes 0, 1, ... for ids in order of first sight (-1: an empty id). Each batch's
    ids are dictionary-encoded, and only the batch's distinct ids are looked up among those seen
    before, all inside Arrow."""

    def __init__(self) -> None:
        self.known = pa.array([], pa.string())

    def __call__(self, values: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(values)
        words = as_keys(encoded.dictionary)  # trimmed text: " a" and "a" are one id
        at = pc.index_in(words, value_set=self.known)
        fresh = pc.unique(pc.filter(words, pc.and_(pc.is_null(at), pc.not_equal(words, ""))))
        if len(fresh):
            later = pc.add(pc.index_in(words, value_set=fresh), len(self.known))
            at = pc.coalesce(at, later)
            self.known = pa.concat_arrays([self.known, fresh])
        lookup = pc.fill_null(at, -1).to_numpy(zero_copy_only=False).astype(np.int32)
        return lookup[encoded.indices.to_numpy(zero_copy_only=False)]

    def keys(self) -> list[str]:
        return self.known.to_pylist()


class Staging:
    """One import's interactions, staged as column files in `scratch`."""

    def __init__(self, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self.scratch = scratch
        self.users, self.items = Codes(), Codes()
        self.rows = 0
        self.unmapped: list[tuple[str, int]] = []  # most frequent unmapped event values, rows
        self.duplicates = np.zeros(0, dtype=np.int64)  # rows repeating an earlier row, sorted
        self.kept: tuple[int, int, int, list[str]] = (0, 0, 0, [])  # set by write_interactions
        self.slices: list[tuple[Path, list[int]]] = []  # set by write_interactions

    def blocks(self, *names: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first row, {name: values}) of staged columns (or `hash`), WRITE_ROWS rows at a time.
        Read into memory a block at a time, not memory-mapped: a mapped file's pages stay in the
        process's resident set as they are read, which would grow with the file."""
        handles = {n: (self.scratch / f"{n}.bin").open("rb") for n in names}
        try:
            for start in range(0, self.rows, WRITE_ROWS):
                n = min(WRITE_ROWS, self.rows - start)
                yield start, {k: np.fromfile(h, _dtype(k), count=n) for k, h in handles.items()}
        finally:
            for handle in handles.values():
                handle.close()

    def gather(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A staged column's values at `rows` (few: the pages around them are read)."""
        mapped = np.memmap(self.scratch / f"{name}.bin", dtype=_dtype(name), mode="r")
        values = np.array(mapped[rows])
        del mapped  # unmapped: its pages leave the resident set
        return values

    def load(self, spec: Interactions, events: list[str], top: int = 5) -> int:
        """Stages the interactions file (`events`: the mapped event values, a row's event code
        is the index of its value there); the first malformed line or unparsable value is a
        DataError naming its line or row and column. The most frequent unmapped event values go
        to `self.unmapped` (value, rows)."""
        source = spec.source
        roles = {spec.user: "user", spec.item: "item", spec.time: "time"}
        roles |= {c: r for r, c in (("event", spec.event), ("rating", spec.rating)) if c}
        source.require(list(roles), roles)
        index = {value: code for code, value in enumerate(events)}
        unmapped: Counter[str] = Counter()
        first_unmapped: dict[str, int] = {}
        files = {name: (self.scratch / f"{name}.bin").open("wb") for name in [*ROW, "hash"]}
        try:
            # The reader runs ahead in a thread of its own, and the item ids are coded beside the
            # user ids (Arrow's kernels release the GIL).
            with ThreadPoolExecutor(max_workers=1) as pool:
                for batch in read_ahead(source.batches(list(roles))):
                    items = pool.submit(self.items, batch[spec.item].combine_chunks())
                    row = {"user": self.users(batch[spec.user].combine_chunks())}
                    row["ts"] = parse_times(
                        source,
                        spec.time,
                        batch[spec.time].combine_chunks(),
                        self.rows,
                        spec.time_format,
                    )
                    n = batch.num_rows
                    row["event"] = np.zeros(n, dtype=np.int16)  # no event values: all plays
                    if spec.event and events:
                        column = batch[spec.event].combine_chunks()
                        row["event"], counts = _event_codes(column, index)
                        for text, (rows, first) in counts.items():
                            unmapped[text] += rows
                            first_unmapped.setdefault(text, self.rows + first)
                    row["rating"] = np.full(n, np.nan, dtype=np.float32)
                    if spec.rating:
                        column = batch[spec.rating].combine_chunks()
                        row["rating"] = parse_numbers(source, spec.rating, column, self.rows)
                    row["item"] = items.result()
                    for name, dtype in ROW.items():
                        row[name].astype(dtype, copy=False).tofile(files[name])
                    _row_hash(row).tofile(files["hash"])
                    self.rows += n
        finally:
            for handle in files.values():
                handle.close()
        ranked = sorted(unmapped.items(), key=lambda v: (-v[1], first_unmapped[v[0]]))
        self.unmapped = ranked[:top]
        return self.rows

    def first_times(self, n_items: int) -> tuple[np.ndarray, int]:
        """Each provisional item code's earliest time among its rows, and the earliest time of
        all rows."""
        first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
        for _, block in self.blocks("item", "ts"):
            known = block["item"] >= 0
            np.minimum.at(first, block["item"][known], block["ts"][known])
        ts_min = int(first.min(initial=np.iinfo(np.int64).max))
        first[first == np.iinfo(np.int64).max] = ts_min
        return first, ts_min

    def find_duplicates(self) -> None:
        """`self.duplicates`: the rows that repeat an earlier row's user, item, time, event and
        rating (rating: NaN equals NaN). The hashes are sorted a slice at a time, and only the
        rows of a repeated hash are compared exactly."""
        slices = max(1, math.ceil(self.rows / HASH_SLICE_ROWS))
        repeated = [np.zeros(0, dtype=np.uint64)]
        for part in range(slices):  # this slice's hashes, gathered a block at a time
            h = np.sort(
                np.concatenate([_part(b["hash"], slices, part) for _, b in self.blocks("hash")])
            )
            repeated.append(np.unique(h[1:][h[1:] == h[:-1]]))
        repeats = np.sort(np.concatenate(repeated))
        if not len(repeats):
            return
        rows = []
        for start, block in self.blocks("hash"):
            h = block["hash"]
            at = np.minimum(np.searchsorted(repeats, h), len(repeats) - 1)
            rows.append(start + np.flatnonzero(repeats[at] == h))
        candidates = np.concatenate(rows)
        keys = [self.gather(name, candidates) for name in ROW]
        keys[-1] = _rating_bits(keys[-1])
        order = np.lexsort([candidates, *keys[::-1]])  # by user, item, ..., then row
        ordered = [k[order] for k in keys]
        same = np.ones(len(order) - 1, dtype=bool)
        for key in ordered:
            same &= key[1:] == key[:-1]
        self.duplicates = np.sort(candidates[order][1:][same])

    def write_interactions(
        self, path: Path, user_of: np.ndarray, item_of: np.ndarray, flags: dict[str, Flag]
    ) -> dict[str, tuple[int, int | None]]:
        """interactions.parquet: the kept rows in the file's order, with dense ids (`user_of`,
        `item_of`: provisional code -> dense id; item 0: not in the items file) and their flags.
        Each kept row also goes to its slice's file for the impression sampler. Returns (count,
        first row) of the rows each check drops, each counted among the rows the checks before
        it kept; sets `self.kept`: (interactions, first time, last time, tasks)."""
        slices = max(1, math.ceil(self.rows / SLICE_ROWS))
        files = SliceFiles(self.scratch / "slices", slices)
        dropped = np.zeros(len(DROPS) + 1, dtype=np.int64)
        first: dict[int, int] = {}
        ts_min, ts_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        has = dict.fromkeys(EVENT_FLAGS, False)
        with (
            pq.ParquetWriter(path, INTERACTIONS_SCHEMA, **WRITE_OPTIONS) as writer,
            ThreadPoolExecutor(max_workers=1) as pool,  # Parquet's writer releases the GIL
            files,
        ):
            pending: Future[None] | None = None
            for start, block in self.blocks(*ROW):
                user, item = block["user"], block["item"]
                item_id = item_of[np.maximum(item, 0)]
                why = np.zeros(len(user), dtype=np.int8)
                tests = [user < 0, item < 0, block["event"] < 0, self._repeats(start, len(user))]
                for reason, test in enumerate([*tests, item_id == 0], start=1):
                    why[(why == 0) & test] = reason
                counts = np.bincount(why, minlength=len(dropped))
                dropped += counts
                for at in (np.flatnonzero(counts[1:]) + 1).tolist():
                    first.setdefault(at, start + int(np.argmax(why == at)))
                keep = why == 0
                event, rating = block["event"][keep], block["rating"][keep]
                values = {
                    "user_id": user_of[user[keep]],
                    "item_id": item_id[keep],
                    "ts": block["ts"][keep],
                    "play": np.ones(len(event), dtype=bool),
                }
                for flag in EVENT_FLAGS:
                    values[flag] = (
                        flags[flag].of(event, rating) if flag in flags else ~values["play"]
                    )
                    has[flag] |= bool(values[flag].any())
                values["rating"] = rating
                if len(event):
                    ts_min = min(ts_min, int(values["ts"].min()))
                    ts_max = max(ts_max, int(values["ts"].max()))
                files.append(values)
                table = arrow_table(values, "interactions")
                if pending is not None:
                    pending.result()  # one block in flight: memory stays bounded
                pending = pool.submit(writer.write_table, table)
            if pending is not None:
                pending.result()
        self.slices = files.files
        tasks = ["play"] + [f for f in EVENT_FLAGS if has[f]]
        kept = int(dropped[0])  # reason 0: kept
        self.kept = (kept, ts_min if kept else 0, ts_max if kept else 0, tasks)
        return {
            name: (int(dropped[reason]), first.get(reason))
            for reason, name in enumerate(DROPS, start=1)
        }

    def _repeats(self, start: int, n: int) -> np.ndarray:
        """Whether each of rows start .. start + n repeats an earlier row."""
        out = np.zeros(n, dtype=bool)
        lo, hi = np.searchsorted(self.duplicates, [start, start + n])
        out[self.duplicates[lo:hi] - start] = True
        return out

    def write_impressions(self, path: Path, items: dict, k: int, rng: np.random.Generator) -> int:
        """impressions.parquet: each kept interaction and k sampled negatives, one slice of users
        at a time (any log up to SLICE_ROWS interactions is one slice), each slice's rows in the
        file's order. Two slices are sampled at once, each with a generator of its own spawned
        from `rng` (the result does not depend on which finishes first), while the slice before
        them is written."""

        def sample(part: tuple[Path, list[int]], generator: np.random.Generator) -> pa.Table:
            log = _read_slice(*part)
            return arrow_table(sample_impressions(log, items, k, generator), "impressions")

        written = 0
        with (
            # The table is read whole, column by column: no statistics to skip pages by.
            pq.ParquetWriter(
                path, IMPRESSIONS_SCHEMA, write_statistics=False, **WRITE_OPTIONS
            ) as writer,
            ThreadPoolExecutor(max_workers=2) as pool,  # numpy and Parquet release the GIL
        ):
            sampled: deque[Future[pa.Table]] = deque()
            # One slice (any log up to SLICE_ROWS) draws from `rng` itself, as the built-in
            # sources do: ml-100k imported equals the built-in ml-100k.
            generators = [rng] if len(self.slices) == 1 else rng.spawn(len(self.slices))
            for part, generator in zip(self.slices, generators, strict=True):
                sampled.append(pool.submit(sample, part, generator))
                if len(sampled) > 2:  # two slices sampled while one is written: bounded memory
                    written += _write(writer, sampled.popleft().result())
            while sampled:
                written += _write(writer, sampled.popleft().result())
        return written


def _write(writer: pq.ParquetWriter, table: pa.Table) -> int:
    writer.write_table(table)
    return table.num_rows


def _part(hashes: np.ndarray, slices: int, part: int) -> np.ndarray:
    return hashes if slices == 1 else hashes[hashes % np.uint64(slices) == part]


def _dtype(name: str) -> type:
    return ROW.get(name, np.uint64)  # `hash` is the one staged file that is not a ROW column


def _event_codes(column: pa.Array, index: dict[str, int]) -> tuple[np.ndarray, dict]:
    """Each row's event code (the index of its trimmed value among the mapped ones; -1 if none),
    and the values not mapped: text -> (rows, first row)."""
    encoded = pc.dictionary_encode(column)
    texts = pc.cast(encoded.dictionary, pa.string()).to_pylist()
    codes = np.array([index.get(t.strip(), -1) for t in texts], dtype=np.int16)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    counts = np.bincount(indices, minlength=len(texts))
    unmapped = {
        texts[at]: (int(counts[at]), int(np.argmax(indices == at)))
        for at in np.flatnonzero((codes < 0) & (counts > 0))
    }
    return codes[indices], unmapped


def _rating_bits(rating: np.ndarray) -> np.ndarray:
    """A rating's bits, every NaN alike (an empty rating equals an empty rating)."""
    canonical = np.where(np.isnan(rating), np.float32(np.nan), rating).astype(np.float32)
    return canonical.view(np.uint32)


def _row_hash(row: dict[str, np.ndarray]) -> np.ndarray:
    """A 64-bit hash of each row's user, item, time, event and rating (a multiply-xorshift mix
    per column): rows that repeat one another share it, others almost never do."""
    h = np.zeros(len(row["ts"]), dtype=np.uint64)
    columns = [row["user"], row["item"], row["ts"], row["event"], _rating_bits(row["rating"])]
    with np.errstate(over="ignore"):
        for column in columns:
            h ^= column.astype(np.int64).view(np.uint64)
            h *= np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return h


# The columns the impression sampler reads, as a slice's file holds them: blocks of rows, each the
# block's values of one column after another (the flags as bits of one byte), so that a slice's rows
# go there by appending bytes and come back with one read.
LOG_COLUMNS = {"user_id": np.int64, "item_id": np.int64, "ts": np.int64, "flags": np.uint8}
INTERACTIONS_SCHEMA = pa.schema(
    [(c, pa.from_numpy_dtype(np.dtype(t))) for c, (t, _) in SCHEMA["interactions"].items()]
)
# Ids and times are too many for dictionary pages; delta-encoded they write fastest and smallest.
WRITE_OPTIONS = {
    "use_dictionary": False,
    "column_encoding": dict.fromkeys(("user_id", "item_id", "ts"), "DELTA_BINARY_PACKED"),
}
IMPRESSIONS_SCHEMA = pa.schema(
    [(c, pa.from_numpy_dtype(np.dtype(t))) for c, (t, _) in SCHEMA["impressions"].items()]
)


class SliceFiles:
    """One file per slice of users (user_id % slices), rows appended in the order they come;
    `files`: each slice's file and the rows of each block in it."""

    def __init__(self, folder: Path, slices: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.slices = slices
        self.files: list[tuple[Path, list[int]]] = [
            (folder / f"{p}.log", []) for p in range(slices)
        ]
        self.handles = [path.open("wb") for path, _ in self.files]

    def __enter__(self) -> SliceFiles:
        return self

    def __exit__(self, *_) -> None:
        for handle in self.handles:
            handle.close()

    def append(self, log: dict[str, np.ndarray]) -> None:
        """Appends rows (a stable sort by slice: the file's order holds within each)."""
        values = {c: log[c] for c in ("user_id", "item_id", "ts")}
        values["flags"] = np.zeros(len(log["ts"]), dtype=np.uint8)
        for bit, flag in enumerate(EVENT_FLAGS):
            values["flags"] |= log[flag].astype(np.uint8) << bit
        part = (values["user_id"] % self.slices).astype(np.min_scalar_type(self.slices - 1))
        order = np.argsort(part, kind="stable")
        ordered = [column[order] for column in values.values()]
        ends = np.cumsum(np.bincount(part, minlength=self.slices)).tolist()
        for handle, (_, blocks), start, end in zip(
            self.handles, self.files, [0, *ends[:-1]], ends, strict=True
        ):
            if end > start:
                for column in ordered:
                    column[start:end].tofile(handle)
                blocks.append(end - start)


def _read_slice(path: Path, blocks: list[int]) -> dict[str, np.ndarray]:
    """One slice's interactions that SliceFiles wrote (`blocks`: rows per block), as the
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
