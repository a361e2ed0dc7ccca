"""The ranker's context fields: what the stages already know about one candidate for one request.

Item popularity (plays before the request), item age (request time - upload time), the user's
affinity to the item's categories and creator (counted over the history the ranker reads), the
recall channels that found it (the candidate list's channel mask), its best position in their
answers (the list's channel positions: recall's own ranks, comparable across channels whose
scores are not) and its position in the MF
model's ranking of the catalogue (recall's MF channel scored again from the bundle's item vectors
over the user's consumed set). `context_values` computes the raw values from plain arrays; the
offline path (`OfflineContext`: the training log at each example's time) and the online path
(`online_context`: the feature store at the data clock) only gather those arrays, so both encode
identical rows (tests/cascade/test_context_fields.py checks them against plain loops).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from cascade.data.schema import Table
from cascade.features import (
    CONTEXT_BUCKETS,
    N_CHANNELS,
    FeatureSpec,
    consumed_before,
    encode_field,
)
from cascade.index_search import search_parameters

DAY_S = 86_400
UNKNOWN = -1  # raw value of a field that cannot be computed (encodes to row 0)
_BITS = np.arange(1, N_CHANNELS, dtype=np.uint32)  # channel enum values 1..N_CHANNELS-1
# mf_position: every position from the field's last bucket boundary on encodes to its last
# bucket, so only the model's top MF_TOP items need telling apart.
MF_TOP = int(CONTEXT_BUCKETS["mf_position"][-1])
BLOCK = 64  # requests scored at once on the exact path: a (BLOCK, n_items) float32 block
# Scored items (nonzero MF vectors) up to this many are scored exactly per request; above, the
# bundle's MF index is searched (recall's exact threshold: IndexSettings.exact_threshold).
MF_EXACT_ROWS = 200_000


@dataclass(frozen=True)
class ItemTables:
    """Item attributes by id (row 0 = unknown): what the context fields read about items."""

    creator: np.ndarray  # (n_items,) int64, 0 = unknown
    categories: np.ndarray  # (n_items, k) int64 category ids, 0-padded
    upload_ts: np.ndarray  # (n_items,) int64, 0 = unknown

    @cached_property
    def n_categories(self) -> int:
        """Category ids run below this: read once, not per request (a pass over the catalogue)."""
        return int(self.categories.max(initial=0)) + 1

    @classmethod
    def from_items(cls, items: Table, n_items: int) -> ItemTables:
        ids = np.asarray(items["item_id"], dtype=np.int64)
        creator = np.zeros(n_items, np.int64)
        creator[ids] = items["creator_id"]
        categories = np.zeros((n_items, np.asarray(items["categories"]).shape[1]), np.int64)
        categories[ids] = items["categories"]
        upload = np.zeros(n_items, np.int64)
        upload[ids] = items["upload_ts"]
        return cls(creator, categories, upload)

    @classmethod
    def from_attributes(cls, attributes: Table) -> ItemTables:
        """From a feature store's item_attributes over every item id (0..n_items-1)."""
        return cls(
            np.asarray(attributes["creator_id"], np.int64),
            np.asarray(attributes["categories"], np.int64),
            np.asarray(attributes["upload_ts"], np.int64),
        )


class MFPositions:
    """Positions of candidates in the MF model's ranking of the catalogue (1 = its best item),
    consumed items and item 0 left out, as recall's MF channel would rank them. EASE: item j's
    score is the sum of vectors[j, consumed]; PureSVD: vectors[j] . sum of fold_in[consumed].

    Only the top `MF_TOP` positions are told apart (every position from the field's last bucket
    boundary on encodes to its last bucket), so no request sorts the catalogue: a candidate outside
    the model's top MF_TOP gets MF_TOP + 1. Exact: the scores of the items with a nonzero vector,
    `BLOCK` requests at a time, a partial selection of each request's top MF_TOP, and the items
    with a zero vector counted as one tie at 0. Above `exact_rows` such items, with the bundle's
    approximate MF index (HNSW), one search per request for the top MF_TOP + |consumed| instead,
    which may miss some of the exact top items."""

    def __init__(
        self,
        vectors: np.ndarray,
        fold_in: np.ndarray | None = None,
        index: faiss.Index | None = None,
        exact_rows: int = MF_EXACT_ROWS,
    ):
        self.vectors = np.asarray(vectors, dtype=np.float32)  # (n_items, dim)
        self.fold_in = fold_in if fold_in is not None and fold_in.size else None
        self.n_items = len(self.vectors)
        # Only items with a nonzero vector score other than 0: PureSVD's are the items played in
        # its training log, a small part of a long-tailed catalogue. The rest form one tie at 0,
        # counted rather than scored.
        has_vector = np.count_nonzero(self.vectors, axis=1) > 0
        has_vector[0] = False
        self.rows = np.flatnonzero(has_vector)  # item ids scored
        self.slot = np.full(self.n_items, -1, np.int32)  # item id -> its row in `scored`, or -1
        self.slot[self.rows] = np.arange(len(self.rows), dtype=np.int32)
        self.scored = self.vectors[self.rows]
        self.n_zero = self.n_items - 1 - len(self.rows)  # items (not item 0) scoring exactly 0
        if index is not None and (self.fold_in is None or index.ntotal != self.n_items - 1):
            raise ValueError(
                f"an MF index serves PureSVD vectors of items 1..{self.n_items - 1}, not "
                f"{index.ntotal} vectors{'' if self.fold_in is not None else ' without a fold-in'}"
            )
        # Searched only when the scored items are too many to score per request.
        self.index = index if len(self.rows) > exact_rows else None

    @classmethod
    def from_bundle(cls, bundle) -> MFPositions | None:
        """The bundle's MF model (recall component), or None when it has none. Its index is read
        only when it is approximate: an exact index would find what the exact path finds."""
        from cascade.mf import COMPONENT, FOLD_IN, INFO_KEY, ITEM_INDEX, ITEM_VECTORS

        info = bundle.manifest["components"].get(COMPONENT, {}).get(INFO_KEY)
        if info is None:
            return None
        vectors = bundle.load_npz(COMPONENT, ITEM_VECTORS)["vectors"]
        fold_in = bundle.load_npz(COMPONENT, FOLD_IN)["fold_in"]
        if fold_in.shape == vectors.shape and np.array_equal(fold_in, vectors):
            fold_in = vectors  # PureSVD folds in with its own item vectors: hold them once
        index = None
        scored = int(np.count_nonzero(vectors[1:].any(axis=1)))
        if info.get("index_kind", "flat") != "flat" and scored > MF_EXACT_ROWS:
            index = faiss.read_index(str(bundle.file(COMPONENT, ITEM_INDEX)))
        return cls(vectors, fold_in, index)

    def positions(self, consumed: list[np.ndarray], item_ids: np.ndarray) -> np.ndarray:
        """(R, K) positions of item_ids (R, K) for the R consumed sets (see `ranked`)."""
        item_ids = np.asarray(item_ids, np.int64)
        return np.stack(self.ranked(consumed, list(item_ids))).reshape(item_ids.shape)

    def ranked(self, consumed: list[np.ndarray], item_ids: list[np.ndarray]) -> list[np.ndarray]:
        """Per request, the positions of its candidates `item_ids[r]` given its consumed set:
        UNKNOWN for an empty set (no history: the model ranks nothing) and for ids outside the
        catalogue, MF_TOP + 1 for a candidate outside the model's top MF_TOP."""
        item_ids = [np.asarray(ids, np.int64) for ids in item_ids]
        out = [np.full(ids.shape, UNKNOWN, np.int64) for ids in item_ids]
        asked = [r for r in range(len(consumed)) if len(consumed[r])]
        for start in range(0, len(asked), BLOCK):
            rows = asked[start : start + BLOCK]
            sets = [self._inside(consumed[r]) for r in rows]
            inside = [(item_ids[r] > 0) & (item_ids[r] < self.n_items) for r in rows]
            ids = [np.where(ok, item_ids[r], 0) for ok, r in zip(inside, rows, strict=True)]
            find = self._top_exact if self.index is None else self._top_searched
            for r, ok, (top, mine, zeros) in zip(rows, inside, find(sets, ids), strict=True):
                # 1 + how many eligible items score higher (ties share a position, as a sort
                # places them): all scored ones are in `top` unless the candidate is outside it,
                # and the eligible items scoring 0 are ahead of a negative score.
                ahead = len(top) - np.searchsorted(top, mine, side="right") + zeros * (mine < 0)
                out[r] = np.where(ok, np.minimum(ahead + 1, MF_TOP + 1), UNKNOWN)
        return out

    def _inside(self, items: np.ndarray) -> np.ndarray:
        items = np.unique(np.asarray(items, np.int64))
        return items[(items > 0) & (items < self.n_items)]

    def _queries(self, sets: list[np.ndarray]) -> np.ndarray:
        """(R, dim) PureSVD queries: the sum of the consumed items' fold-in rows (no multi-hot)."""
        if self.fold_in is None:
            raise ValueError("EASE has no query vectors")
        return np.stack([self.fold_in[s].sum(axis=0, dtype=np.float32) for s in sets])

    def _top_exact(self, sets: list[np.ndarray], ids: list[np.ndarray]) -> list[TopScores]:
        """Per request: its top MF_TOP eligible nonzero-vector scores (ascending), its candidates'
        scores, both read from one (R <= BLOCK, len(rows)) block of scores, and how many eligible
        items score exactly 0."""
        if self.fold_in is None:  # EASE (small catalogues): columns of the item-item weights
            scores = np.stack([self.scored[:, s].sum(axis=1, dtype=np.float32) for s in sets])
        else:
            scores = self._queries(sets) @ self.scored.T
        keep = min(MF_TOP, len(self.rows))
        found = []
        for row, items, candidates in zip(scores, sets, ids, strict=True):
            at = self.slot[candidates]
            mine = np.where(at >= 0, row[at], np.float32(0.0))
            consumed = self.slot[items]
            row[consumed[consumed >= 0]] = -np.inf  # the consumed set is never ranked
            top = np.partition(row, len(row) - keep)[len(row) - keep :]
            zeros = self.n_zero - int(np.count_nonzero(consumed < 0))
            found.append((np.sort(top[top > -np.inf]), mine, zeros))
        return found

    def _top_searched(self, sets: list[np.ndarray], ids: list[np.ndarray]) -> list[TopScores]:
        """As _top_exact, from one index search per request for the top MF_TOP + |consumed|; a
        candidate the search found keeps the index's score for it (so it compares with the
        others as they were found), any other is scored here."""
        if self.index is None:
            raise ValueError("no MF index to search")
        queries = self._queries(sets)
        k = min(MF_TOP + max(len(s) for s in sets), self.index.ntotal)
        scores, positions = self.index.search(queries, k, params=search_parameters(self.index, k))
        found = []
        for query, items, candidates, got, at in zip(
            queries, sets, ids, scores, positions, strict=True
        ):
            keep = (at >= 0) & ~np.isin(at + 1, items)
            got, at = got[keep][:MF_TOP], at[keep][:MF_TOP] + 1
            mine = self.vectors[candidates] @ query
            by_id = np.argsort(at)
            hit = np.minimum(np.searchsorted(at, candidates, sorter=by_id), len(at) - 1)
            if len(at):
                hit = by_id[hit]
                mine = np.where(at[hit] == candidates, got[hit], mine)
            top = np.sort(got)
            eligible = self.index.ntotal - len(items)
            if len(top) < min(MF_TOP, eligible):  # the graph found fewer: the rest lie below
                pad = top[0] if len(top) else np.float32(np.inf)
                top = np.concatenate([np.full(MF_TOP - len(top), pad, np.float32), top])
            found.append((top, mine, 0))  # the index holds the items scoring 0 too
        return found


# Top scores (ascending), the candidates' scores, eligible items outside them scoring exactly 0.
TopScores = tuple[np.ndarray, np.ndarray, int]


class FoldedMF:
    """Out-of-fold MF positions for training-period rows. The bundle's MF model was fitted on the
    whole training log, so it has seen what each user went on to play after a training example's
    time: scored with it, training positives sit higher than test positives ever do, and the
    ranker learns to over-trust the field. Here users fall into `folds` seeded groups and a row's
    position comes from the same kind of model fitted without its user's interactions (as at test
    time, where the items to find are in no model's training data)."""

    def __init__(self, models: list[MFPositions], fold_of_user: np.ndarray):
        self.models, self.fold_of_user = models, fold_of_user
        self.n_items = models[0].n_items

    @classmethod
    def fit(
        cls, interactions: Table, n_users: int, n_items: int, info: dict, folds: int = 5
    ) -> FoldedMF:
        """`info`: the bundle's MF entry (model kind and settings, cascade/mf.py)."""
        from cascade.mf import MFSettings, fit_ease, fit_pure_svd

        settings = MFSettings(**info["settings"])
        fold_of_user = np.random.default_rng(settings.seed).integers(0, folds, n_users + 1)
        models = []
        for fold in range(folds):
            keep = fold_of_user[np.asarray(interactions["user_id"])] != fold
            train = {k: np.asarray(v)[keep] for k, v in interactions.items()}
            if info["model"] == "ease":
                models.append(MFPositions(fit_ease(train, n_users, n_items, settings.ease_l2)))
            else:
                vectors = fit_pure_svd(
                    train,
                    n_users,
                    n_items,
                    settings.svd_dim,
                    settings.svd_power_iterations,
                    settings.seed,
                )
                models.append(MFPositions(vectors, vectors))
        return cls(models, fold_of_user)

    def split(self, user_ids: np.ndarray) -> list[tuple[np.ndarray, MFPositions]]:
        """(row mask, model) per fold present among user_ids."""
        ids = np.clip(np.asarray(user_ids, np.int64), 0, len(self.fold_of_user) - 1)
        fold = self.fold_of_user[ids]
        return [(fold == f, m) for f, m in enumerate(self.models) if (fold == f).any()]


def context_values(
    items: ItemTables,
    item_ids: np.ndarray,
    history: np.ndarray,
    now: np.ndarray,
    plays: np.ndarray,
    channel_masks: np.ndarray | None = None,
    mf_positions: np.ndarray | None = None,
    channel_positions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Raw context values for n candidates. history: (n, L) or (1, L) item ids (0 = padding),
    now: (n,) request times (s), plays: (n,) the item's plays before the request,
    channel_positions: (n,) best 1-based positions in recall's channels (0 = unknown)."""
    item_ids = np.asarray(item_ids, np.int64)
    n = len(item_ids)
    inside = (item_ids > 0) & (item_ids < len(items.creator))
    ids = np.where(inside, item_ids, 0)
    history = np.asarray(history, np.int64)
    history = np.where((history > 0) & (history < len(items.creator)), history, 0)
    upload = items.upload_ts[ids]
    age = np.where(upload > 0, np.maximum(np.asarray(now, np.int64) - upload, 0) // DAY_S, UNKNOWN)
    # Per history row: how many history items carry each category (padding counts for none).
    n_categories = items.n_categories
    profile = np.zeros((len(history), n_categories), np.int64)
    hist_categories = items.categories[history]  # (h, L, k)
    rows = np.broadcast_to(np.arange(len(history))[:, None, None], hist_categories.shape)
    k = hist_categories.shape[-1]
    same = hist_categories[..., :, None] == hist_categories[..., None, :]  # (h, L, k, k)
    repeated = (same & np.triu(np.ones((k, k), bool), 1)).any(axis=-2)  # seen in an earlier slot
    real = (hist_categories > 0) & (history > 0)[:, :, None] & ~repeated  # each item counts once
    np.add.at(profile, (rows[real], hist_categories[real]), 1)
    profile = np.broadcast_to(profile, (n, n_categories))
    mine = items.categories[ids]  # (n, k)
    per_category = np.take_along_axis(profile, mine, axis=1) * (mine > 0)
    creator = items.creator[ids]
    played = np.broadcast_to(history, (n, history.shape[1])) > 0
    same = (items.creator[history] == creator[:, None]) & played
    masks = np.zeros(n, np.uint32)
    if channel_masks is not None:
        masks = np.asarray(channel_masks, np.uint32)
    channels = np.where((masks[:, None] >> _BITS[None, :]) & 1, _BITS[None, :], 0)
    best = np.zeros(n, np.int64)
    if channel_positions is not None:
        best = np.asarray(channel_positions, np.int64)
    return {
        "item_plays": np.where(inside, np.asarray(plays, np.int64), UNKNOWN),
        "item_age_days": np.where(inside, age, UNKNOWN),
        "category_affinity": np.where(inside, per_category.max(axis=1, initial=0), UNKNOWN),
        "creator_affinity": np.where(inside & (creator > 0), same.sum(axis=1), UNKNOWN),
        "mf_position": (
            np.full(n, UNKNOWN, np.int64) if mf_positions is None else np.asarray(mf_positions)
        ),
        "channels": channels.astype(np.int64),
        "channel_position": np.where(best > 0, best, UNKNOWN),
    }


def encode_context(spec: FeatureSpec, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw context values -> the model's int64 rows, one entry per context field of `spec`."""
    return {f.name: encode_field(f, values[f.column]) for f in spec.of("context")}


class OfflineContext:
    """Context values for (user, item, time) rows from the training log: plays, history and
    consumed set strictly before each row's time; the request time is capped at the log's end
    (serving's data clock, so a test-period row sees what serving sees)."""

    def __init__(
        self,
        items: ItemTables,
        interactions: Table,
        mf: MFPositions | FoldedMF | None = None,
        as_of: int | None = None,
    ):
        self.items, self.mf = items, mf
        self.interactions = interactions
        played = np.asarray(interactions["play"], bool)
        item, ts = interactions["item_id"][played], interactions["ts"][played]
        self._play_keys = np.sort(item.astype(np.int64) * 2**33 + ts)  # ts < 2**33 s
        # Serving's data clock: the end of the log its store was built from. `interactions` may
        # run past it (plays heard online, folded in by training/retrain.py), so it can be given.
        self.as_of = int(np.max(interactions["ts"], initial=0)) if as_of is None else int(as_of)

    def values(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        ts: np.ndarray,
        history: np.ndarray,
        channel_masks: np.ndarray | None = None,
        channel_positions: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        item_ids = np.asarray(item_ids, np.int64)
        ts = np.asarray(ts, np.int64)
        now = np.minimum(ts, self.as_of)
        # Plays of the item strictly before ts: keys in [item * 2**33, item * 2**33 + ts).
        base = item_ids * 2**33
        plays = np.searchsorted(self._play_keys, base + np.minimum(ts, 2**33 - 1)) - (
            np.searchsorted(self._play_keys, base)
        )
        positions = None
        if self.mf is not None:
            positions = self._mf_positions(np.asarray(user_ids, np.int64), item_ids, ts)
        return context_values(
            self.items, item_ids, history, now, plays, channel_masks, positions, channel_positions
        )

    def _mf_positions(self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray):
        """Once per distinct (user, time) request, its consumed sets read 512 requests at a time."""
        keys, inverse = np.unique(np.stack([user_ids, ts], axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        out = np.empty(len(item_ids), np.int64)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
        mf = self.mf
        if mf is None:
            raise ValueError("MF positions asked of a context built without an MF model")
        folds = (
            mf.split(keys[:, 0]) if isinstance(mf, FoldedMF) else [(np.ones(len(keys), bool), mf)]
        )
        for in_fold, model in folds:
            requests = np.flatnonzero(in_fold)
            for start in range(0, len(requests), 512):
                part = requests[start : start + 512]
                consumed = consumed_before(self.interactions, keys[part, 0], keys[part, 1])
                rows = [order[bounds[r] : bounds[r + 1]] for r in part]
                found = model.ranked(consumed, [item_ids[r] for r in rows])
                for at, positions in zip(rows, found, strict=True):
                    out[at] = positions
        return out


def online_context(
    store,
    items: ItemTables,
    user_id: int,
    item_ids: np.ndarray,
    history: np.ndarray,
    recent_item_ids: np.ndarray | None = None,
    channel_masks: np.ndarray | None = None,
    mf: MFPositions | None = None,
    channel_positions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One request's raw context values from the feature store: its play counters, its data
    clock (the training log's end) and the user's consumed set plus the request's recent items.
    `history`: the (L,) history row the ranker reads; `channel_masks`, `channel_positions`: the
    candidate list's, as recall sent them."""
    item_ids = np.asarray(item_ids, np.int64)
    plays = store.item_counters(item_ids)["play"]
    now = np.full(len(item_ids), store.as_of, np.int64)
    positions = None
    if mf is not None:
        consumed = store.consumed(int(user_id))
        if recent_item_ids is not None and len(recent_item_ids):
            consumed = np.union1d(consumed, np.asarray(recent_item_ids, np.int64))
        positions = mf.positions([consumed], item_ids[None, :])[0]
    history = np.asarray(history, np.int64).reshape(1, -1)
    return context_values(
        items, item_ids, history, now, plays, channel_masks, positions, channel_positions
    )
