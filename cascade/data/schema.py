"""The one schema every data source produces, and its on-disk form (parquet, one file a table).

Ids are dense positive integers; 0 is reserved for "unknown / padding" everywhere (ids, categories,
occupations, regions), so embedding tables can be indexed by id directly. Times are Unix seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Most categories one item can have; rows are padded with 0.
MAX_CATEGORIES = 6

# table -> column -> (dtype, meaning). A loaded table has exactly these columns.
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "users": {
        "user_id": ("int64", "dense id, 1..n_users"),
        "age": ("int16", "years; -1 unknown"),
        "gender": ("int8", "0 unknown, 1 male, 2 female, 3 other"),
        "occupation": ("int16", "index into meta.occupations; 0 unknown"),
        "region": ("int32", "coarse region code; 0 unknown"),
    },
    "items": {
        "item_id": ("int64", "dense id, 1..n_items"),
        "creator_id": ("int64", "creators.creator_id; 0 unknown"),
        "categories": ("int16", f"(n, {MAX_CATEGORIES}) indices into meta.categories, 0-padded"),
        "upload_ts": ("int64", "when the item entered the catalog"),
        "title": ("str", "display title"),
    },
    "creators": {
        "creator_id": ("int64", "dense id, 1..n_creators"),
        "user_id": ("int64", "the creator's own account (users.user_id); 0 when none"),
        "name": ("str", "display name"),
    },
    "follows": {
        "follower_id": ("int64", "users.user_id who follows"),
        "followee_id": ("int64", "users.user_id being followed"),
        "ts": ("int64", "when the follow happened"),
    },
    "interactions": {
        "user_id": ("int64", "who"),
        "item_id": ("int64", "what"),
        "ts": ("int64", "when"),
        "play": ("bool", "played (every interaction is a play)"),
        "complete": ("bool", "played to the end (false when unknown)"),
        "like": ("bool", "liked (ml-100k: rating >= 4)"),
        "share": ("bool", "shared"),
        "rating": ("float32", "explicit rating; NaN when none"),
    },
    "impressions": {
        "user_id": ("int64", "who was shown"),
        "item_id": ("int64", "what was shown"),
        "ts": ("int64", "when"),
        "position": ("int16", "slot on the page, 0 first; -1 unknown"),
        "click": ("bool", "label: clicked"),
        "play": ("bool", "label: played"),
        "complete": ("bool", "label: completed"),
        "like": ("bool", "label: liked"),
        "share": ("bool", "label: shared"),
    },
}

# Columns a source may go without; a loaded table holds them only when its source had them.
OPTIONAL: dict[str, dict[str, tuple[str, str]]] = {
    "items": {
        # What an audio or video encoder makes of the upload, known the moment it is uploaded:
        # the models score an item nobody has played from it (docs/cold-start.md).
        "content": ("float32", "(n, d) content vector, finite; absent when the source has none"),
    },
}

TABLES = tuple(SCHEMA)


def columns_of(name: str, table: Mapping[str, np.ndarray]) -> list[str]:
    """The columns of table `name` that are written and read: SCHEMA's, then the optional
    ones it holds."""
    return [*SCHEMA[name], *(c for c in OPTIONAL.get(name, {}) if c in table)]


def item_content(items: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(n, d) float32 content vectors of an items table, or None when its source has none."""
    return items["content"] if "content" in items else None


Table = dict[str, np.ndarray]


class DataError(RuntimeError):
    """A data file is missing or corrupt; the message names the file and the command to fix it."""


@dataclass
class Dataset:
    """One data source in the common schema.

    `meta` holds: name, categories (names, index 0 = "none"), occupations (names, index 0 =
    "unknown"), tasks (the event labels this source really has) and a free-text description.
    `truth` holds ground-truth arrays for evaluation only (synthetic world), never features.
    """

    users: Table
    items: Table
    creators: Table
    follows: Table
    interactions: Table
    impressions: Table
    meta: dict
    truth: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def n_users(self) -> int:
        """Rows an id-indexed user table needs (max id + 1, row 0 = unknown)."""
        return int(self.users["user_id"].max()) + 1

    @property
    def n_items(self) -> int:
        """Rows an id-indexed item table needs (max id + 1, row 0 = unknown)."""
        return int(self.items["item_id"].max()) + 1

    def table(self, name: str) -> Table:
        return getattr(self, name)

    def validate(self) -> None:
        """Raises DataError when a table's columns, dtypes or lengths break SCHEMA."""
        for name, columns in SCHEMA.items():
            table = self.table(name)
            missing = set(columns) - set(table)
            if missing:
                raise DataError(f"{self.name}: table {name!r} lacks columns {sorted(missing)}")
            lengths = {len(table[c]) for c in columns}
            if len(lengths) > 1:
                raise DataError(f"{self.name}: table {name!r} has columns of unequal length")
            for column, (dtype, _) in columns.items():
                actual = table[column].dtype
                ok = actual.kind in "OUT" if dtype == "str" else actual == np.dtype(dtype)
                if not ok:
                    raise DataError(f"{self.name}: {name}.{column} is {actual}, expected {dtype}")
        categories = self.items["categories"]
        if categories.ndim != 2 or categories.shape[1] != MAX_CATEGORIES:
            raise DataError(f"{self.name}: items.categories must be (n, {MAX_CATEGORIES})")
        content = item_content(self.items)
        if content is not None:
            n = len(self.items["item_id"])
            if content.dtype != np.float32 or content.ndim != 2 or len(content) != n:
                raise DataError(f"{self.name}: items.content must be ({n}, d) float32")
            if content.shape[1] < 1 or not np.isfinite(content).all():
                raise DataError(f"{self.name}: items.content must be finite, of width >= 1")


def _to_arrow(column: np.ndarray) -> pa.Array:
    if column.ndim == 2:
        flat = pa.array(column.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, column.shape[1])
    if column.dtype.kind in "OUT":
        return pa.array(column.astype(str).tolist(), type=pa.string())
    return pa.array(column)


def arrow_table(table: Table, name: str) -> pa.Table:
    """One table of the schema as Arrow, columns in SCHEMA's order."""
    return pa.table({c: _to_arrow(table[c]) for c in columns_of(name, table)})


class ParquetTable(Mapping[str, np.ndarray]):
    """A table written to Parquet, read one column at a time on first use: an imported log too
    large to hold whole still answers `table["user_id"]`."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self._columns: dict[str, np.ndarray] = {}

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self._columns:
            known = {**SCHEMA[self.name], **OPTIONAL.get(self.name, {})}
            if column not in known:
                raise KeyError(column)
            if column not in SCHEMA[self.name]:  # optional: only when the file has it
                if column not in pq.ParquetFile(self.path).schema_arrow.names:
                    raise KeyError(column)
            arrow = pq.read_table(self.path, columns=[column]).column(column)
            self._columns[column] = _from_arrow(arrow, known[column][0])
        return self._columns[column]

    def __iter__(self) -> Iterator[str]:
        return iter(SCHEMA[self.name])

    def __len__(self) -> int:
        return len(SCHEMA[self.name])


def _from_arrow(column: pa.ChunkedArray, dtype: str) -> np.ndarray:
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.astype(dtype).reshape(-1, width)
    if dtype == "str":
        return np.asarray(column.to_pylist(), dtype=object)
    return column.to_numpy().astype(dtype, copy=False)


def fix_command(name: str) -> str:
    if name in ("ml-100k", "synthetic"):
        return f"cascade data --source {name}"
    return f"cascade data import --name {name} --force ..."


def save(dataset: Dataset, folder: Path, written: tuple[str, ...] = ()) -> None:
    """Writes one parquet file per table, meta.json and (if any) truth.npz into folder; the
    `written` tables are already there (streamed by the caller) and are not validated again."""
    if not written:
        dataset.validate()
    folder.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        if name not in written:
            pq.write_table(arrow_table(dataset.table(name), name), folder / f"{name}.parquet")
    if dataset.truth:
        np.savez(folder / "truth.npz", allow_pickle=True, **dataset.truth)  # default, named
    (folder / "meta.json").write_text(json.dumps(dataset.meta, indent=2))


def load(folder: Path) -> Dataset:
    """Reads a dataset written by save(); a missing or corrupt file raises DataError naming it."""
    name = folder.name
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{meta_path} is missing: run `{fix_command(name)}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{meta_path} is corrupt ({error}): run `{fix_command(name)}`") from None
    tables = {}
    for table_name in TABLES:
        path = folder / f"{table_name}.parquet"
        try:
            arrow = pq.read_table(path)
            tables[table_name] = {
                column: _from_arrow(arrow.column(column), dtype)
                for column, (dtype, _) in SCHEMA[table_name].items()
            }
            for column, (dtype, _) in OPTIONAL.get(table_name, {}).items():
                if column in arrow.column_names:
                    tables[table_name][column] = _from_arrow(arrow.column(column), dtype)
        except FileNotFoundError:
            raise DataError(f"{path} is missing: run `{fix_command(name)}`") from None
        except (pa.ArrowException, KeyError, ValueError, OSError) as error:
            raise DataError(f"{path} is corrupt ({error}): run `{fix_command(name)}`") from None
    truth = {}
    truth_path = folder / "truth.npz"
    if truth_path.exists():
        try:
            with np.load(truth_path, allow_pickle=False) as archive:
                truth = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            raise DataError(
                f"{truth_path} is corrupt ({error}): run `{fix_command(name)}`"
            ) from None
    dataset = Dataset(**tables, meta=meta, truth=truth)
    dataset.validate()
    return dataset
