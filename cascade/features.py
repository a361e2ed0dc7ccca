"""One feature specification for training and serving, so offline and online features agree.

A FeatureSpec lists the model's input fields: where each comes from (a users/items column or the
user's recent history), how raw values become embedding rows (identity ids, buckets, multi-hot
categories), the vocabulary size and the field's own embedding width. Every model builds its
inputs with `encode`, offline from dataset tables and online from the feature store's tables, so
the two paths run the same code. Index 0 is always "unknown / padding". The "context" fields
describe one candidate for one user at one time (counters, item age, affinities to the user's
history, the recall channels that found it and its best place in their answers, its MF rank);
only the ranker reads them, and cascade/context_fields.py computes them, offline and online
alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from cascade.data.schema import Dataset, Table, item_content

AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens' own age groups
HISTORY_LENGTH = 50

DEFAULT_WIDTHS = {
    "user_id": 32,
    "age": 4,
    "gender": 2,
    "occupation": 4,
    "region": 4,
    "item_id": 32,
    "creator_id": 16,
    "categories": 8,
    "content": 16,  # the content vector's projection (datasets with an items.content column)
    "context": 4,  # every context field (ranker only)
}
# Context fields: raw value -> bucket. Counts and positions grow roughly geometrically, so do the
# boundaries; a negative raw value (not known, e.g. no MF model) is row 0.
CONTEXT_BUCKETS = {
    "item_plays": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),  # plays before the request
    "item_age_days": (1, 2, 4, 7, 14, 30, 60, 120, 240, 480),  # request time - upload time
    "category_affinity": (1, 2, 3, 5, 8, 13, 21, 34),  # history items in its best category
    "creator_affinity": (1, 2, 3, 5, 8),  # history items by the same creator
    # 1 = the MF model's top item; about 20% apart, so the ranker can follow the MF order closely
    "mf_position": tuple(sorted({int(round(1.2**k)) for k in range(4, 43)})),
}
N_CHANNELS = 8  # channel enum values 1..7 (cascade.v1.Channel); 0 = padding
# The candidate's best 1-based position in a finding recall channel's answer (CandidateList's
# channel_positions): a rank, not a score, so channels whose scores share no scale compare;
# about 50% apart (top 1, 2, 3, 5, 8, ... 2,217 of recall's 2,000). An optional field: in a spec
# only when its width is given (build_spec), so bundles trained before it keep their spec.
CHANNEL_POSITION = "channel_position"
CHANNEL_POSITION_BUCKETS = tuple(sorted({int(round(1.5**k)) for k in range(20)}))
OPTIONAL_FIELDS = (CHANNEL_POSITION,)


@dataclass(frozen=True)
class Field:
    """One model input.

    kind: "id" (value is the embedding row, OOV -> 0), "bucket" (numeric, bucketized by
    `boundaries`; unknown < 0 -> 0), "multi" (a 0-padded (n, k) set of ids), "sequence" (the user's
    recent item ids, newest first, 0-padded; shares the item_id embedding), "dense" (a (n,
    vocab_size) float32 vector, e.g. the item's content vector; unknown = zeros; models project it
    to `width`).
    """

    name: str
    entity: str  # "user", "item", "context" (one candidate for one request) or "history"
    kind: str
    column: str
    vocab_size: int
    width: int
    boundaries: tuple[float, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    fields: tuple[Field, ...]
    history_length: int = HISTORY_LENGTH

    def of(self, entity: str) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.entity == entity)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no feature field named {name!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        fields = tuple(Field(**{**f, "boundaries": tuple(f["boundaries"])}) for f in raw["fields"])
        return cls(fields=fields, history_length=raw["history_length"])

    @property
    def fingerprint(self) -> str:
        """Short hash of the whole spec: artifacts record it; a mismatch refuses to load."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def check_matches(self, other: FeatureSpec, where: str) -> None:
        """Raises ValueError naming the first field that differs between self and other. An
        optional field that only one side has does not count: only the ranker reads it, so a
        store built on a ranker's spec serves models built without it (recall's two-tower)."""
        if self == other:
            return
        mine, theirs = {f.name: f for f in self.fields}, {f.name: f for f in other.fields}
        for name in sorted(set(mine) | set(theirs)):
            if name in OPTIONAL_FIELDS and (name not in mine or name not in theirs):
                continue
            if mine.get(name) != theirs.get(name):
                ours, other_field = mine.get(name), theirs.get(name)
                raise ValueError(f"{where}: field {name!r} differs: {ours} vs {other_field}")
        if self.history_length != other.history_length:
            raise ValueError(
                f"{where}: history_length {self.history_length} vs {other.history_length}"
            )


def build_spec(dataset: Dataset, widths: dict[str, int] | None = None) -> FeatureSpec:
    """The spec for a dataset: vocabularies sized from its tables, widths from config. The
    optional context field channel_position is in it when `widths` names it."""
    width = {**DEFAULT_WIDTHS, **(widths or {})}
    users, items = dataset.users, dataset.items
    fields = (
        Field("user_id", "user", "id", "user_id", dataset.n_users, width["user_id"]),
        Field("age", "user", "bucket", "age", len(AGE_BUCKETS) + 2, width["age"], AGE_BUCKETS),
        Field("gender", "user", "id", "gender", 4, width["gender"]),
        Field(
            "occupation",
            "user",
            "id",
            "occupation",
            len(dataset.meta["occupations"]),
            width["occupation"],
        ),
        Field("region", "user", "id", "region", int(users["region"].max()) + 1, width["region"]),
        Field("item_id", "item", "id", "item_id", dataset.n_items, width["item_id"]),
        Field(
            "creator_id",
            "item",
            "id",
            "creator_id",
            int(items["creator_id"].max()) + 1,
            width["creator_id"],
        ),
        Field(
            "categories",
            "item",
            "multi",
            "categories",
            len(dataset.meta["categories"]),
            width["categories"],
        ),
        *content_field(dataset, width),
        *context_fields(width),
        Field("history", "history", "sequence", "item_id", dataset.n_items, width["item_id"]),
    )
    return FeatureSpec(fields)


def content_field(dataset: Dataset, width: dict[str, int]) -> tuple[Field, ...]:
    """The item's content vector as a dense field, when the dataset's items carry one; a dataset
    without content represents an item by its id, creator and categories alone."""
    content = item_content(dataset.items)
    if content is None:
        return ()
    return (Field("content", "item", "dense", "content", content.shape[1], width["content"]),)


def content_width(spec: FeatureSpec) -> int:
    """The content vector's width in a spec (0 when its dataset has none)."""
    dense = [f.vocab_size for f in spec.of("item") if f.name == "content"]
    return dense[0] if dense else 0


def context_fields(width: dict[str, int]) -> tuple[Field, ...]:
    """The ranker's per-candidate fields (values from cascade/context_fields.py); each field's
    width is its own entry in `width`, else the "context" entry. channel_position is there only
    when `width` names it (a ranker trained with it: its spec's widths say so)."""
    own = lambda name: width.get(name, width["context"])  # noqa: E731
    buckets = tuple(
        Field(name, "context", "bucket", name, len(bounds) + 2, own(name), bounds)
        for name, bounds in CONTEXT_BUCKETS.items()
    )
    channels = Field("channels", "context", "multi", "channels", N_CHANNELS, own("channels"))
    if CHANNEL_POSITION not in width:
        return (*buckets, channels)
    bounds = CHANNEL_POSITION_BUCKETS
    position = Field(
        CHANNEL_POSITION,
        "context",
        "bucket",
        CHANNEL_POSITION,
        len(bounds) + 2,
        own(CHANNEL_POSITION),
        bounds,
    )
    return (*buckets, channels, position)


def encode_field(field: Field, values: np.ndarray) -> np.ndarray:
    """Raw column values -> embedding rows (int64), unknown and out-of-vocabulary -> 0."""
    values = np.asarray(values)
    if field.kind == "dense":
        dense = values.astype(np.float32).reshape(len(values), field.vocab_size)
        return np.where(np.isfinite(dense), dense, 0.0).astype(np.float32)
    if field.kind == "bucket":
        rows = np.searchsorted(np.asarray(field.boundaries), values, side="right") + 1
        return np.where(values < 0, 0, rows).astype(np.int64)
    rows = values.astype(np.int64)
    return np.where((rows > 0) & (rows < field.vocab_size), rows, 0)


def encode(spec: FeatureSpec, entity: str, table: Table) -> dict[str, np.ndarray]:
    """Encodes every field of one entity ("user" or "item") from table columns."""
    return {f.name: encode_field(f, table[f.column]) for f in spec.of(entity)}


def encode_by_id(
    spec: FeatureSpec, entity: str, table: Table, id_column: str, n_rows: int
) -> dict[str, np.ndarray]:
    """Encodes a whole users/items table once into arrays indexed by id (row 0 = unknown, zeros)."""
    encoded = encode(spec, entity, table)
    ids = table[id_column]
    by_id = {}
    for name, values in encoded.items():
        rows = np.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)  # dense: float32
        rows[ids] = values
        by_id[name] = rows
    return by_id


def lookup(by_id: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of an encode_by_id table for ids; ids outside the table get the unknown row 0."""
    ids = np.asarray(ids, dtype=np.int64)
    n_rows = len(next(iter(by_id.values())))
    ids = np.where((ids > 0) & (ids < n_rows), ids, 0)
    return {name: rows[ids] for name, rows in by_id.items()}


def consumed_before(log: Table, user_ids: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
    """Per request, the sorted unique items the user consumed in `log` strictly before ts."""
    order = np.lexsort((log["ts"], log["user_id"]))
    users, times, items = log["user_id"][order], log["ts"][order], log["item_id"][order]
    start = np.searchsorted(users, user_ids, side="left")
    end = np.searchsorted(users, user_ids, side="right")
    out = []
    for s, e, t in zip(start.tolist(), end.tolist(), ts.tolist(), strict=True):
        cut = s + int(np.searchsorted(times[s:e], t, side="left"))
        out.append(np.unique(items[s:cut]))
    return out


def history_before(
    interactions: Table, user_ids: np.ndarray, ts: np.ndarray, length: int
) -> np.ndarray:
    """(n, length) item ids each user consumed strictly before ts, newest first, 0-padded.

    The offline twin of FeatureStore.history: for a request at time t it sees exactly what the
    store would have held at t.
    """
    order = np.lexsort(
        (np.arange(len(interactions["ts"])), interactions["ts"], interactions["user_id"])
    )
    users_sorted = interactions["user_id"][order]
    ts_sorted = interactions["ts"][order]
    items_sorted = interactions["item_id"][order]
    user_ids, ts = np.asarray(user_ids, np.int64), np.asarray(ts, np.int64)
    # Per example: the range of its user's rows, and the first row at or after ts.
    start = np.searchsorted(users_sorted, user_ids, side="left")
    end = np.searchsorted(users_sorted, user_ids, side="right")
    key_sorted = users_sorted * 2**33 + ts_sorted  # int64: ts < 2**33 s, user ids < 2**30
    cut = np.searchsorted(key_sorted, user_ids * 2**33 + ts, side="left")
    cut = np.clip(cut, start, end)
    offsets = cut[:, None] - 1 - np.arange(length)[None, :]  # newest first
    valid = offsets >= start[:, None]
    items = np.concatenate([items_sorted, [0]])
    return np.where(valid, items[np.where(valid, offsets, -1)], 0)
