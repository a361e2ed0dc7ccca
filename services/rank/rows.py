"""The ranker's input rows, built the same way offline (training) and online (serving).

A row is one (user, item, history) triple encoded by the FeatureSpec: the user's fields, the
item's fields and the user's recent items (newest first). Offline, history is what the user played
strictly before the impression (`history_before` over the training interactions); online it is the
feature store's ring buffer, which holds exactly that at serving time. Both paths end in
`assemble`, so the model sees identical arrays.
"""

from __future__ import annotations

import numpy as np

from cascade.data.schema import Dataset, Table
from cascade.feature_store import FeatureStore
from cascade.features import FeatureSpec, encode_by_id, encode_field, history_before, lookup

Rows = dict[str, np.ndarray]  # input name -> (n, ...) int64, the ONNX model's inputs


def input_names(spec: FeatureSpec) -> tuple[str, ...]:
    """Model inputs in spec order: user fields, item fields, then the history sequence."""
    return tuple(f.name for entity in ("user", "item", "history") for f in spec.of(entity))


def assemble(
    spec: FeatureSpec,
    user: Rows,
    item: Rows,
    history: np.ndarray,
    n: int | None = None,
    one_user_row: bool = False,
) -> Rows:
    """Model inputs from encoded user and item fields; a single user row is repeated to n rows,
    or kept as one row when `one_user_row` (the model broadcasts it, see FieldEmbeddings)."""
    n = len(next(iter(item.values()))) if n is None else n
    user_rows = 1 if one_user_row else n
    rows: Rows = {}
    for f in spec.of("user"):
        values = user[f.name]
        rows[f.name] = np.broadcast_to(values, (user_rows, *values.shape[1:])).copy()  # writable
    for f in spec.of("item"):
        rows[f.name] = np.ascontiguousarray(item[f.name], dtype=np.int64)
    (history_field,) = spec.of("history")
    history = np.asarray(history, dtype=np.int64)
    rows[history_field.name] = np.broadcast_to(history, (user_rows, spec.history_length)).copy()
    return rows


class OfflineRows:
    """Encodes (user, item, time) rows from dataset tables, with history from `interactions`."""

    def __init__(self, dataset: Dataset, spec: FeatureSpec, interactions: Table):
        self.spec = spec
        self.interactions = interactions
        self._users = encode_by_id(spec, "user", dataset.users, "user_id", dataset.n_users)
        self._items = encode_by_id(spec, "item", dataset.items, "item_id", dataset.n_items)

    def rows(self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray) -> Rows:
        history = history_before(self.interactions, user_ids, ts, self.spec.history_length)
        return assemble(
            self.spec, lookup(self._users, user_ids), lookup(self._items, item_ids), history
        )

    def impressions(self, impressions: Table) -> Rows:
        return self.rows(impressions["user_id"], impressions["item_id"], impressions["ts"])


def online_rows(
    store: FeatureStore,
    user_id: int,
    item_ids: np.ndarray,
    recent_item_ids: np.ndarray | None = None,
    one_user_row: bool = False,
) -> Rows:
    """One request's rows from the feature store. `recent_item_ids` (newest first) are events the
    store may not have seen yet; they go in front of the stored history. `one_user_row`: the
    user's fields and history as one row (for a model that broadcasts them)."""
    history = store.history(np.array([user_id], dtype=np.int64))[0]  # (history_length,)
    if recent_item_ids is not None and len(recent_item_ids):
        (field,) = store.spec.of("history")
        recent = encode_field(field, np.asarray(recent_item_ids, dtype=np.int64))  # OOV -> 0
        history = np.concatenate([recent, history])
        history = history[history > 0][: store.spec.history_length]
        history = np.pad(history, (0, store.spec.history_length - len(history)))
    user = store.user_features(np.array([user_id], dtype=np.int64))
    items = store.item_features(item_ids)
    return assemble(store.spec, user, items, history, n=len(item_ids), one_user_row=one_user_row)
