"""Files that other processes read while they change: written whole to a temporary beside the
target, then renamed over it, so a reader (a watcher, the supervisor, a test polling a state
file) sees the old content or the new, never an empty or half-written file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replaces path with data in one rename; mode applies from the first byte (0o600 for keys
    and files holding tokens)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)


def with_other_datasets(path: Path, rows: list[dict]) -> list[dict]:
    """`rows` joined to the rows of the JSON table at `path` (a list of rows with a "dataset")
    whose dataset none of `rows` has, sorted by dataset: rerunning one dataset keeps the others'."""
    path = Path(path)
    ran = {row["dataset"] for row in rows}
    kept = json.loads(path.read_text()) if path.exists() else []
    kept = [row for row in kept if row["dataset"] not in ran]
    return sorted(kept + rows, key=lambda row: row["dataset"])  # stable: each dataset's order
