"""The platform's ids at the boundary: external user and item ids <-> dense internal ids.

Models, tables and the feature store index users and items by dense ids 1..n (0 = unknown or
padding). Clients speak their own ids: any int64, or strings. `IdMap` is the one place that maps
one to the other. Ids the dataset knows keep their dense id; ids seen for the first time online
(a user who signed up after training) get the next dense id, up to a capacity, so nothing ever
allocates by the raw value of an id and a huge id costs what a small one costs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ExternalId = int | str


class IdSpaceFull(Exception):
    """No dense id is left for a new external id (the map holds `capacity` ids)."""


def external_key(external: ExternalId) -> str:
    """The canonical text of an external id: int64 ids and their decimal strings are one id."""
    if isinstance(external, bool):
        raise TypeError("an id is an int or a str, not a bool")
    if isinstance(external, (int, np.integer)):
        return str(int(external))
    if isinstance(external, str):
        if not external or len(external) > 256:
            raise ValueError("a string id must have 1 to 256 characters")
        return external
    raise TypeError(f"an id is an int or a str, got {type(external).__name__}")


class IdMap:
    """External ids <-> dense ids 1..len(self).

    `identity` ids are the dataset's own dense ids whose external form is the same number
    (MovieLens, the synthetic world): they cost no memory. `known` lists further external ids in
    dense order (an imported dataset's string ids). `assign` adds new ids on first sight, up to
    `capacity` in all; beyond it, IdSpaceFull. Thread-safe.
    """

    def __init__(self, capacity: int, identity: int = 0, known: Sequence[str] = ()):
        if identity < 0 or capacity < identity + len(known):
            raise ValueError(
                f"capacity {capacity} is below the {identity + len(known)} ids already known"
            )
        self.capacity = capacity
        self._identity = identity
        self._by_key: dict[str, int] = {}
        self._keys: list[str] = []  # external key of dense id identity + 1 + i
        self._lock = threading.Lock()
        self._add(known)

    def __len__(self) -> int:
        return self._identity + len(self._keys)

    def lookup(self, externals: Iterable[ExternalId]) -> np.ndarray:
        """Dense ids, 0 where the external id was never seen (nothing is added)."""
        keys = [external_key(e) for e in externals]
        with self._lock:
            return np.array([self._find(k) for k in keys], dtype=np.int64)

    def assign(self, externals: Iterable[ExternalId]) -> np.ndarray:
        """Dense ids, adding unseen ones in order; all or nothing when the map would overflow."""
        keys = [external_key(e) for e in externals]
        with self._lock:
            ids = [self._find(k) for k in keys]
            new = list(dict.fromkeys(k for k, i in zip(keys, ids, strict=True) if i == 0))
            if len(self) + len(new) > self.capacity:
                raise IdSpaceFull(
                    f"{len(new)} new ids do not fit: {len(self)} of {self.capacity} are taken"
                )
            self._add(new)
            return np.array([self._find(k) for k in keys], dtype=np.int64)

    def external(self, dense_ids: Iterable[int]) -> list[str]:
        """The external key of each dense id (ValueError for 0 or an id the map never gave)."""
        out = []
        with self._lock:
            for dense in dense_ids:
                dense = int(dense)
                if 1 <= dense <= self._identity:
                    out.append(str(dense))
                elif self._identity < dense <= len(self):
                    out.append(self._keys[dense - self._identity - 1])
                else:
                    raise ValueError(f"dense id {dense} is not in the map (1..{len(self)})")
        return out

    def save(self, path: Path) -> None:
        """Writes the non-identity part as parquet (external_id, id), plus the identity size."""
        table = pa.table(
            {
                "external_id": pa.array(self._keys, pa.string()),
                "id": pa.array(np.arange(len(self._keys)) + self._identity + 1, pa.int64()),
            }
        )
        meta = {b"identity": str(self._identity).encode()}
        pq.write_table(table.replace_schema_metadata(meta), path)

    @classmethod
    def load(cls, path: Path, capacity: int) -> IdMap:
        table = pq.read_table(path)
        identity = int((table.schema.metadata or {}).get(b"identity", b"0"))
        ids = table["id"].to_numpy()
        if not np.array_equal(ids, np.arange(len(ids)) + identity + 1):
            raise ValueError(f"{path}: ids are not dense from {identity + 1}")
        return cls(capacity, identity, table["external_id"].to_pylist())

    @classmethod
    def for_dataset(cls, path: Path, n_known: int, capacity: int) -> IdMap:
        """The dataset's map saved at `path` (an imported dataset's own ids) or, when there is
        none, the identity over its `n_known` dense ids (MovieLens, the synthetic world)."""
        if path.exists():
            loaded = cls.load(path, capacity)
            if len(loaded) != n_known:
                raise ValueError(f"{path}: {len(loaded)} ids for {n_known} dataset rows")
            return loaded
        return cls(capacity, identity=n_known)

    def restore(self, dense_ids: Iterable[int], externals: Iterable[ExternalId]) -> int:
        """Takes back ids assigned before a restart, as the event log recorded them (dense id,
        external id), in any order. A dense id whose assignment never reached the log (its
        Feedback failed) is held by a placeholder key no client id can equal, so every later id
        keeps its number. Returns how many ids were added; ValueError on a conflict."""
        pairs: dict[int, str] = {}
        for dense, external in zip(dense_ids, externals, strict=True):
            key = external_key(external)
            if int(dense) > len(self) and pairs.setdefault(int(dense), key) != key:
                raise ValueError(f"dense id {dense} was logged for two external ids")
        with self._lock:
            for key in pairs.values():
                if self._find(key):
                    raise ValueError(f"external id {key!r} was logged under two dense ids")
            top = max(pairs, default=0)
            if top > self.capacity:
                raise IdSpaceFull(f"the log holds dense id {top}; the capacity is {self.capacity}")
            start = len(self) + 1
            self._add([pairs.get(d, f"\x00unlogged:{d}") for d in range(start, top + 1)])
            return max(top - start + 1, 0)

    # -- lock held ----------------------------------------------------------------------------
    def _find(self, key: str) -> int:
        dense = self._by_key.get(key)
        if dense is not None:
            return dense
        if self._identity and key.isdigit() and key[0] != "0" and int(key) <= self._identity:
            return int(key)
        return 0

    def _add(self, keys: Sequence[str]) -> None:
        for key in keys:
            if self._find(key):
                raise ValueError(f"external id {key!r} is listed twice")
            self._keys.append(key)
            self._by_key[key] = len(self)
