"""The ranker's context fields, offline and online, against a plain-loop reference.

The reference reads the raw tables row by row (the log, the items table, the MF vectors) with no
code shared with cascade/context_fields.py; offline rows (training) and online rows (the feature
store at serving time) must both equal it.
"""

from __future__ import annotations

import bisect

import faiss
import numpy as np
import pytest

from cascade.candidates import from_proto, to_proto
from cascade.context_fields import MF_TOP, MFPositions
from cascade.data.split import split_dataset
from cascade.feature_store import InMemoryFeatureStore
from cascade.features import (
    CHANNEL_POSITION,
    CHANNEL_POSITION_BUCKETS,
    CONTEXT_BUCKETS,
    build_spec,
)
from cascade.rows import OfflineRows, online_rows
from tests.conftest import make_tiny_dataset

SCALE = 20_000  # seconds per tick of the tiny dataset: its events then span days (item ages)
AFTER_TRAINING = 2**32  # a request time after the whole training log (serving)


@pytest.fixture(scope="module")
def world():
    dataset = make_tiny_dataset(seed=5, n_users=8, n_items=20, n_events=300)
    dataset.interactions["ts"] = dataset.interactions["ts"] * SCALE
    dataset.impressions["ts"] = dataset.impressions["ts"] * SCALE
    dataset.items["upload_ts"] = (dataset.items["upload_ts"] + 60) * SCALE
    spec = build_spec(dataset, {CHANNEL_POSITION: 4})  # the optional field too
    split = split_dataset(dataset)
    rng = np.random.default_rng(0)
    ease = MFPositions(rng.normal(size=(dataset.n_items, dataset.n_items)).astype(np.float32))
    svd = MFPositions(
        rng.normal(size=(dataset.n_items, 3)).astype(np.float32),
        rng.normal(size=(dataset.n_items, 3)).astype(np.float32),
    )
    return dataset, spec, split, ease, svd


def reference(dataset, spec, log, mf, user, item, ts, mask, extra_consumed=(), best=0):
    """Raw values of one row by plain loops over the tables."""
    items = {int(i): k for k, i in enumerate(dataset.items["item_id"])}
    row = items[item]
    as_of = max(int(t) for t in log["ts"])
    now = min(ts, as_of)
    events = sorted(
        (int(t), int(i), bool(p), int(u))
        for u, i, t, p in zip(log["user_id"], log["item_id"], log["ts"], log["play"], strict=True)
    )
    plays = sum(1 for t, i, p, _ in events if i == item and p and t < ts)
    mine = [(t, i) for t, i, _, u in events if u == user and t < ts]
    history = [i for _, i in sorted(mine, reverse=True)][: spec.history_length]
    categories = [int(c) for c in dataset.items["categories"][row] if c > 0]
    per_category = [
        sum(1 for h in history if c in dataset.items["categories"][items[h]]) for c in categories
    ]
    creator = int(dataset.items["creator_id"][row])
    same_creator = sum(1 for h in history if int(dataset.items["creator_id"][items[h]]) == creator)
    consumed = {i for _, i in mine} | set(extra_consumed)
    position = -1
    if mf is not None and consumed:

        def score(j):
            if mf.fold_in is None:
                return sum(float(mf.vectors[j][h]) for h in consumed)
            query = [sum(float(mf.fold_in[h][d]) for h in consumed) for d in range(3)]
            return sum(float(mf.vectors[j][d]) * query[d] for d in range(3))

        mine_score = score(item)
        others = [j for j in range(1, dataset.n_items) if j not in consumed]
        position = 1 + sum(1 for j in others if score(j) > mine_score)
    return {
        "item_plays": plays,
        "item_age_days": max(now - int(dataset.items["upload_ts"][row]), 0) // 86_400,
        "category_affinity": max(per_category, default=0),
        "creator_affinity": same_creator if creator > 0 else -1,
        "mf_position": position,
        "channels": [c for c in range(1, 8) if mask >> c & 1],
        "channel_position": best if best > 0 else -1,
    }


def encoded(spec, raw):
    """The reference's raw values as embedding rows (bisect over each field's boundaries)."""
    out = {}
    for name, bounds in [*CONTEXT_BUCKETS.items(), (CHANNEL_POSITION, CHANNEL_POSITION_BUCKETS)]:
        value = raw[name]
        out[name] = 0 if value < 0 else bisect.bisect_right(bounds, value) + 1
    out["channels"] = sorted(raw["channels"])
    return out


def check(spec, rows, index, expected, where):
    for name in (*CONTEXT_BUCKETS, CHANNEL_POSITION):
        assert rows[name][index] == expected[name], f"{where}: {name}"
    got_channels = sorted(int(c) for c in rows["channels"][index] if c > 0)
    assert got_channels == expected["channels"], f"{where}: channels"


@pytest.mark.parametrize("model", ["ease", "svd", "none"])
def test_offline_rows_match_the_reference_at_training_times(world, model):
    dataset, spec, split, ease, svd = world
    mf = {"ease": ease, "svd": svd, "none": None}[model]
    log = split.train_interactions
    offline = OfflineRows(dataset, spec, log, mf)
    rng = np.random.default_rng(1)
    picks = rng.choice(len(log["ts"]), 25, replace=False)
    users, items, ts = log["user_id"][picks], log["item_id"][picks], log["ts"][picks]
    masks = rng.integers(0, 2**8, len(picks)).astype(np.uint32)
    positions = (rng.integers(0, 3000, len(picks)) * (masks > 0)).astype(np.uint32)
    rows = offline.rows(users, items, ts, masks, positions)
    for k in range(len(picks)):
        user, item, t, mask = int(users[k]), int(items[k]), int(ts[k]), int(masks[k])
        raw = reference(dataset, spec, log, mf, user, item, t, mask, best=int(positions[k]))
        check(spec, rows, k, encoded(spec, raw), f"row {k}")


@pytest.mark.parametrize("model", ["ease", "svd"])
def test_online_rows_match_the_reference_at_serving_time(world, model):
    dataset, spec, split, ease, svd = world
    mf = ease if model == "ease" else svd
    log = split.train_interactions
    store = InMemoryFeatureStore.from_split(dataset, spec, split)
    offline = OfflineRows(dataset, spec, log, mf)
    items = np.arange(1, dataset.n_items)
    masks = (np.arange(len(items)) * 37 % 256).astype(np.uint32)
    positions = ((np.arange(len(items)) * 263 % 2500) * (masks > 0)).astype(np.uint32)
    # Online, the list arrives as recall sends it: through the wire and back.
    wire = from_proto(to_proto(items, None, masks, positions))
    for user in np.unique(log["user_id"]).tolist():
        got = online_rows(
            store,
            user,
            wire.item_ids,
            channel_masks=wire.channel_masks,
            mf=mf,
            channel_positions=wire.channel_positions,
        )
        after = np.full(len(items), AFTER_TRAINING)
        both = offline.rows(np.full(len(items), user), items, after, masks, positions)
        for k, item in enumerate(items.tolist()):
            raw = reference(
                dataset,
                spec,
                log,
                mf,
                user,
                item,
                AFTER_TRAINING,
                int(masks[k]),
                best=int(positions[k]),
            )
            check(spec, got, k, encoded(spec, raw), f"user {user} item {item} online")
            check(spec, both, k, encoded(spec, raw), f"user {user} item {item} offline")


def test_a_play_sent_with_the_request_moves_the_mf_position_and_counts_in_history(world):
    """Recent items (not yet in the store) join the consumed set and the history at once."""
    dataset, spec, split, ease, _ = world
    log = split.train_interactions
    store = InMemoryFeatureStore.from_split(dataset, spec, split)
    user = int(log["user_id"][0])
    consumed = set(store.consumed(user).tolist())
    new = next(i for i in range(1, dataset.n_items) if i not in consumed)
    items = np.array([i for i in range(1, dataset.n_items) if i not in consumed | {new}])
    got = online_rows(store, user, items, np.array([new]), mf=ease)
    for k, item in enumerate(items.tolist()):
        raw = reference(dataset, spec, log, ease, user, item, AFTER_TRAINING, 0, {new})
        assert got["mf_position"][k] == encoded(spec, raw)["mf_position"]


def test_unknown_values_are_row_zero(world):
    dataset, spec, split, _, _ = world
    offline = OfflineRows(dataset, spec, split.train_interactions)  # no MF model
    rows = offline.rows(np.array([1, 1]), np.array([3, 10**6]), np.array([AFTER_TRAINING] * 2))
    assert rows["mf_position"].tolist() == [0, 0]
    assert rows["item_plays"][1] == rows["item_age_days"][1] == 0  # not in the catalogue
    assert not rows["channels"].any()
    assert not rows[CHANNEL_POSITION].any()


def test_channel_position_is_in_a_spec_only_when_its_width_is_given(world):
    """Bundles trained before the field keep their spec (and so still load)."""
    dataset, spec, _, _, _ = world
    assert CHANNEL_POSITION in {f.name for f in spec.of("context")}
    assert CHANNEL_POSITION not in {f.name for f in build_spec(dataset).of("context")}
    # Only the ranker reads it: a store on the ranker's spec serves recall's two-tower.
    build_spec(dataset).check_matches(spec, "two-tower vs the ranker's store")
    spec.check_matches(build_spec(dataset), "the ranker's spec vs a plain store")
    with pytest.raises(ValueError, match="field 'channel_position' differs"):
        spec.check_matches(build_spec(dataset, {CHANNEL_POSITION: 8}), "another width")


def test_fusion_tuning_keeps_the_scale_whose_fused_score_orders_the_primary_task_best():
    from services.rank.fusion import tune_fusion

    # Two users; "like" probabilities rank the plays backwards, so any like weight costs GAUC.
    impressions = {
        "user_id": np.array([1, 1, 1, 2, 2, 2]),
        "play": np.array([1, 0, 0, 1, 0, 0], dtype=bool),
        "like": np.array([0, 1, 0, 0, 1, 0], dtype=bool),
    }
    probabilities = np.array(
        [[0.6, 0.0], [0.5, 0.9], [0.1, 0.0], [0.7, 0.1], [0.6, 0.8], [0.2, 0.0]]
    )
    fusion, tried = tune_fusion(
        probabilities, impressions, ("play", "like"), {"like": 2.0}, (0.0, 0.5, 1.0)
    )
    assert fusion == {"play": 1.0, "like": 0.0}
    assert [row["play GAUC"] for row in tried] == [1.0, 0.5, 0.5]
    # Nothing to compare (every impression played): the configured weights.
    played = {**impressions, "play": np.ones(6, dtype=bool)}
    assert tune_fusion(probabilities, played, ("play", "like"), {"like": 2.0}, (0.0,))[0] == {
        "play": 1.0,
        "like": 2.0,
    }


def test_rows_of_a_folded_log_match_the_store_that_heard_it(world):
    """Continuous training (training/retrain.py) builds rows from the training log plus the plays
    heard online, on serving's data clock: they equal what the store that heard those plays
    serves, every field (item ages included, though the folded log runs days past the store's
    clock) and the MF position from the consumed set with the online plays."""
    dataset, spec, split, _, svd = world
    log = split.train_interactions
    store = InMemoryFeatureStore.from_split(dataset, spec, split)
    end = int(log["ts"].max())
    users, heard = np.array([1, 2, 1]), np.array([4, 4, 9])
    stamps = end + np.array([1, 2, 3]) * 86_400 * 2  # days after the store's data clock
    store.record(users, heard, stamps, ["play"] * 3)
    folded = {k: np.concatenate([v, np.zeros(3, v.dtype)]) for k, v in log.items()}
    folded["user_id"][-3:], folded["item_id"][-3:], folded["ts"][-3:] = users, heard, stamps
    folded["play"][-3:] = True
    offline = OfflineRows(dataset, spec, folded, svd, as_of=end)
    items = np.arange(1, dataset.n_items)
    request = int(stamps[-1]) + 3600
    for user in (1, 2):
        online = online_rows(store, user, items, mf=svd)
        rows = offline.rows(np.full(len(items), user), items, np.full(len(items), request))
        for name, values in online.items():
            expected = np.broadcast_to(values, rows[name].shape)
            assert np.array_equal(rows[name], expected), f"user {user}: {name}"


def full_sort_positions(scores, consumed, ids):
    """The definition: 1 + eligible items (not item 0, not consumed) scoring higher, by a sort
    of the whole catalogue."""
    eligible = np.ones(len(scores), bool)
    eligible[0] = False
    eligible[list(consumed)] = False
    ranked = np.sort(-scores[eligible])
    return np.searchsorted(ranked, -scores[ids], side="left") + 1


@pytest.fixture(scope="module")
def catalogue():
    """A catalogue larger than MF_TOP (so the cut matters) and consumed sets of a few sizes."""
    rng = np.random.default_rng(7)
    n_items, dim = MF_TOP * 3, 8
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    vectors[0] = 0.0
    consumed = [rng.choice(np.arange(1, n_items), size, replace=False) for size in (1, 5, 40)]
    consumed.append(np.array([], np.int64))  # no history: unknown
    candidates = [np.arange(n_items) for _ in consumed]  # every item, item 0 and consumed too
    return vectors, consumed, candidates


def test_positions_up_to_the_last_bucket_equal_a_full_sort_and_the_rest_share_it(catalogue):
    vectors, consumed, candidates = catalogue
    got = MFPositions(vectors, vectors).ranked(consumed, candidates)
    for items, ids, mine in zip(consumed, candidates, got, strict=True):
        if not len(items):
            assert (mine == -1).all()
            continue
        scores = vectors @ vectors[np.sort(items)].sum(axis=0)  # summed in id order, as served
        expected = full_sort_positions(scores, items, ids)
        assert mine[0] == -1  # item 0 is outside the catalogue
        top = expected[1:] <= MF_TOP
        assert top.sum() >= MF_TOP  # the cut falls inside the catalogue
        assert (mine[1:][top] == expected[1:][top]).all()
        assert (mine[1:][~top] == MF_TOP + 1).all()
        assert len(set(mine[1:][top].tolist())) == MF_TOP  # distinct scores: 1..MF_TOP each once


def test_items_without_a_vector_are_one_tie_at_zero_counted_not_scored(catalogue):
    """Most of a long-tailed catalogue has no plays in the MF model's log, so a zero vector and a
    score of exactly 0: counted ahead of every negative score, behind every positive one."""
    vectors, consumed, candidates = catalogue
    vectors = vectors.copy()
    vectors[np.random.default_rng(2).random(len(vectors)) < 0.9] = 0.0
    model = MFPositions(vectors, vectors)
    assert len(model.rows) < len(vectors) // 5
    cut = []
    got = model.ranked(consumed, candidates)
    for items, ids, mine in zip(consumed, candidates, got, strict=True):
        if not len(items):
            continue
        expected = full_sort_positions(vectors @ vectors[np.sort(items)].sum(axis=0), items, ids)
        assert (mine[1:] == np.minimum(expected[1:], MF_TOP + 1)).all()
        cut.append((expected[1:] > MF_TOP).any())
    assert any(cut)  # some negative scores fall past the cut behind the tie at 0


def test_an_index_search_gives_the_exact_positions_when_the_index_is_exact(catalogue):
    """The served path above the exact threshold asks the bundle's MF index; on an exact index
    it must agree with the scored path (consumed items dropped from its answer, item 0 never in
    it)."""
    vectors, consumed, candidates = catalogue
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors[1:])
    searched = MFPositions(vectors, vectors, index, exact_rows=0).ranked(consumed, candidates)
    scored = MFPositions(vectors, vectors).ranked(consumed, candidates)
    for a, b in zip(searched, scored, strict=True):
        assert (a == b).all()


def test_an_ease_model_cuts_at_the_last_bucket_too():
    rng = np.random.default_rng(3)
    n_items = MF_TOP + 500
    vectors = rng.normal(size=(n_items, n_items)).astype(np.float32)
    items = np.array([3, 17, 400])
    got = MFPositions(vectors).ranked([items], [np.arange(1, n_items)])[0]
    expected = full_sort_positions(vectors[:, items].sum(axis=1), items, np.arange(1, n_items))
    assert (got == np.minimum(expected, MF_TOP + 1)).all()
