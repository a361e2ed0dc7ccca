"""The ranker's input rows, built the same way offline (training) and online (serving).

A row is one (user, item, history) triple encoded by the FeatureSpec: the user's fields, the
item's fields, the candidate's context fields (cascade/context_fields.py) and the user's recent
items (newest first). Offline, history is what the user played
strictly before the impression (`history_before` over the training interactions); online it is the
feature store's ring buffer, which holds exactly that at serving time. Both paths end in
`assemble`, so the model sees identical arrays.
"""

from __future__ import annotations

import numpy as np

from cascade.context_fields import (
    FoldedMF,
    ItemTables,
    MFPositions,
    OfflineContext,
    encode_context,
    online_context,
)
from cascade.data.schema import Dataset, Table
from cascade.feature_store import FeatureStore
from cascade.features import FeatureSpec, encode_by_id, encode_field, history_before, lookup

Rows = dict[str, np.ndarray]  # input name -> (n, ...) int64 (float32: dense fields), ONNX inputs


def input_names(spec: FeatureSpec) -> tuple[str, ...]:
    """Model inputs in spec order: user, item and context fields, then the history sequence."""
    return tuple(
        f.name for entity in ("user", "item", "context", "history") for f in spec.of(entity)
    )


def assemble(
    spec: FeatureSpec,
    user: Rows,
    item: Rows,
    history: np.ndarray,
    n: int | None = None,
    one_user_row: bool = False,
    context: Rows | None = None,
) -> Rows:
    """Model inputs from encoded user, item and context fields; a single user row is repeated to
    n rows, or kept as one row when `one_user_row` (the model broadcasts it, see
    FieldEmbeddings). Without `context` every context field is 0 (unknown)."""
    n = len(next(iter(item.values()))) if n is None else n
    user_rows = 1 if one_user_row else n
    rows: Rows = {}
    for f in spec.of("user"):
        values = user[f.name]
        rows[f.name] = np.broadcast_to(values, (user_rows, *values.shape[1:])).copy()  # writable
    for f in spec.of("item"):
        dtype = np.float32 if f.kind == "dense" else np.int64  # the content vector is float
        rows[f.name] = np.ascontiguousarray(item[f.name], dtype=dtype)
    for f in spec.of("context"):
        if context is None:
            shape = (n, f.vocab_size - 1) if f.kind == "multi" else (n,)
            rows[f.name] = np.zeros(shape, dtype=np.int64)
        else:
            rows[f.name] = np.ascontiguousarray(context[f.name], dtype=np.int64)
    (history_field,) = spec.of("history")
    # Ids past the vocabulary (uploads played since the spec was built) become the unknown row
    # 0, as encode_field does for every other id: raw, the embedding lookup would be out of range.
    history = encode_field(history_field, np.asarray(history, dtype=np.int64))
    rows[history_field.name] = np.broadcast_to(history, (user_rows, spec.history_length)).copy()
    return rows


class OfflineRows:
    """Encodes (user, item, time) rows from dataset tables, with history, counters and consumed
    sets from `interactions`; `mf` (the bundle's MF model) fills the mf_position field; `as_of`:
    serving's data clock when `interactions` runs past it (see OfflineContext)."""

    def __init__(
        self,
        dataset: Dataset,
        spec: FeatureSpec,
        interactions: Table,
        mf: MFPositions | FoldedMF | None = None,  # FoldedMF: out-of-fold positions (training)
        as_of: int | None = None,
    ):
        self.spec = spec
        self.interactions = interactions
        self._users = encode_by_id(spec, "user", dataset.users, "user_id", dataset.n_users)
        self._items = encode_by_id(spec, "item", dataset.items, "item_id", dataset.n_items)
        items = ItemTables.from_items(dataset.items, dataset.n_items)
        self.context = OfflineContext(items, interactions, mf, as_of)

    def rows(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        ts: np.ndarray,
        channel_masks: np.ndarray | None = None,
        channel_positions: np.ndarray | None = None,
    ) -> Rows:
        history = history_before(self.interactions, user_ids, ts, self.spec.history_length)
        context = self.context.values(
            user_ids, item_ids, ts, history, channel_masks, channel_positions
        )
        return assemble(
            self.spec,
            lookup(self._users, user_ids),
            lookup(self._items, item_ids),
            history,
            context=encode_context(self.spec, context),
        )

    def impressions(self, impressions: Table) -> Rows:
        """Rows of an impressions-like table; its `channel_mask` and `channel_position` columns,
        when present (recall examples), fill the channels and channel_position fields."""
        return self.rows(
            impressions["user_id"],
            impressions["item_id"],
            impressions["ts"],
            impressions.get("channel_mask"),
            impressions.get("channel_position"),
        )


def online_rows(
    store: FeatureStore,
    user_id: int,
    item_ids: np.ndarray,
    recent_item_ids: np.ndarray | None = None,
    one_user_row: bool = False,
    channel_masks: np.ndarray | None = None,
    mf: MFPositions | None = None,
    items: ItemTables | None = None,
    channel_positions: np.ndarray | None = None,
) -> Rows:
    """One request's rows from the feature store. `recent_item_ids` (newest first) are events the
    store may not have seen yet; they go in front of the stored history. `one_user_row`: the
    user's fields and history as one row (for a model that broadcasts them). `channel_masks`,
    `channel_positions`: the candidates' recall tags and best positions in the channels'
    answers; `mf`: the MF model for mf_position; `items`: the catalogue's attributes (read from
    the store when None)."""
    history = store.history(np.array([user_id], dtype=np.int64))[0]  # (history_length,)
    if recent_item_ids is not None and len(recent_item_ids):
        (field,) = store.spec.of("history")
        recent = encode_field(field, np.asarray(recent_item_ids, dtype=np.int64))  # OOV -> 0
        history = np.concatenate([recent, history])
        history = history[history > 0][: store.spec.history_length]
        history = np.pad(history, (0, store.spec.history_length - len(history)))
    user = store.user_features(np.array([user_id], dtype=np.int64))
    features = store.item_features(item_ids)
    items = store_items(store) if items is None else items
    context = online_context(
        store,
        items,
        user_id,
        item_ids,
        history,
        recent_item_ids,
        channel_masks,
        mf,
        channel_positions,
    )
    return assemble(
        store.spec,
        user,
        features,
        history,
        n=len(item_ids),
        one_user_row=one_user_row,
        context=encode_context(store.spec, context),
    )


def store_items(store: FeatureStore) -> ItemTables:
    """Every item's attributes as the store holds them (ids 0..n_items-1)."""
    return ItemTables.from_attributes(store.item_attributes(np.arange(store.n_items)))
