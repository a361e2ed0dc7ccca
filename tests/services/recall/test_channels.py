"""Each recall channel on a hand-made world with known answers (tests/services/recall/conftest)."""

from __future__ import annotations

import numpy as np

from services.recall.channels import RecallContext
from services.recall.channels.fresh import FreshChannel
from services.recall.channels.item_cf import ItemCFChannel
from services.recall.channels.popular import PopularChannel
from services.recall.channels.profile import ProfileChannel
from services.recall.channels.social import SocialChannel
from services.recall.tables import build_tables, item_cf_csr, neighbours_of

DAY = 86_400
NOW = 60 * DAY


def context(user: int, recent: list[int], ts: int = NOW) -> RecallContext:
    return RecallContext(user, np.array(recent, dtype=np.int64), ts, True)


def test_item_cf_ranks_close_co_consumption_first(world):
    channel = ItemCFChannel(build_tables(world, world.interactions)["item_cf"])
    ids, scores = channel.retrieve(context(9, [1]), 10)
    # 2 follows 1 within a minute for three users; 3 follows 1 once, ten days later.
    assert ids.tolist() == [2, 3]
    assert scores[0] > scores[1] > 0
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert channel.retrieve(context(9, [8]), 10)[0].tolist() == [7, 9]  # ties: smaller id first
    assert channel.retrieve(context(9, [1]), 1)[0].tolist() == [2]
    assert len(channel.retrieve(context(0, []), 10)[0]) == 0  # nothing recent: nothing to say


def test_item_cf_newest_recent_item_weighs_most(world):
    channel = ItemCFChannel(build_tables(world, world.interactions)["item_cf"])
    ids, _ = channel.retrieve(context(9, [7, 2]), 10)  # 7 is newest: its neighbours lead
    assert set(ids[:2].tolist()) == {8, 9} and 1 in ids.tolist()
    assert 7 not in ids and 2 not in ids  # the seeds themselves never come back


def test_item_cf_keeps_only_the_pairs_it_has_and_reads_dense_rows_alike(world):
    table = build_tables(world, world.interactions)["item_cf"]
    assert len(table["ptr"]) == world.n_items + 1 and (table["neighbours"] > 0).all()
    assert len(table["neighbours"]) == table["ptr"][-1] == len(table["weights"])
    # A bundle written with (n_items, k) 0-padded rows serves the same answers.
    k = int(np.diff(table["ptr"]).max()) + 2
    rows, values = np.zeros((world.n_items, k), np.int64), np.zeros((world.n_items, k), np.float32)
    for item in range(world.n_items):
        items, weights = neighbours_of(table, item)
        rows[item, : len(items)], values[item, : len(items)] = items, weights
    dense = item_cf_csr({"neighbours": rows, "weights": values})
    for recent in ([1], [7, 2], [8, 1, 3]):
        for a, b in zip(
            ItemCFChannel(table).retrieve(context(9, recent), 10),
            ItemCFChannel(dense).retrieve(context(9, recent), 10),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


def test_profile_returns_the_top_creators_and_categories_items(world, world_store):
    channel = ProfileChannel(build_tables(world, world.interactions)["profile"], world_store)
    ids, _ = channel.retrieve(context(9, [7, 8]), 20)
    # Only creator 3 / category 3 in the taste: exactly its items, the liked 9 (trending) first,
    # the never-played ones last, newest upload first among them.
    assert ids[0] == 9 and set(ids.tolist()) == {7, 8, 9, 10, 11, 12}
    assert ids[-3:].tolist() == [12, 11, 10]
    mixed, _ = channel.retrieve(context(9, [7, 8, 1]), 20)
    assert set(mixed.tolist()) == {1, 2, 3, 7, 8, 9, 10, 11, 12}  # creator 2 is not a taste
    assert len(channel.retrieve(context(0, []), 20)[0]) == 0


def test_social_returns_what_followees_liked_and_is_empty_without_follows(world):
    tables = build_tables(world, world.interactions)
    channel = SocialChannel(tables["social"])
    assert channel.retrieve(context(6, []), 10)[0].tolist() == [9]  # user 5 liked 9
    assert len(channel.retrieve(context(1, []), 10)[0]) == 0  # follows nobody
    assert len(channel.retrieve(context(6, [], ts=0), 10)[0]) == 0  # the like is in the future
    world.follows = {k: v[:0] for k, v in world.follows.items()}
    bare = SocialChannel(build_tables(world, world.interactions)["social"])
    assert not bare.available and len(bare.retrieve(context(6, []), 10)[0]) == 0


def test_social_builds_when_an_upload_comes_from_a_creator_without_an_account(world):
    # The two-sided world's creators join after the creators table was written.
    late = int(world.creators["creator_id"].max()) + 5
    world.items["creator_id"] = world.items["creator_id"].copy()
    world.items["creator_id"][-1] = late
    channel = SocialChannel(build_tables(world, world.interactions)["social"])
    assert channel.retrieve(context(6, []), 10)[0].tolist() == [9]  # nobody follows `late`


def test_fresh_explores_recent_uploads_only_and_learns_from_feedback(world, world_store):
    channel = FreshChannel(
        build_tables(world, world.interactions)["fresh"], world_store, window_s=30 * DAY
    )
    ids, _ = channel.retrieve(context(0, [], ts=NOW), 10)
    assert sorted(ids.tolist()) == [11, 12]  # uploaded on days 40 and 50; the rest on day 0
    assert channel.retrieve(context(0, [], ts=45 * DAY), 10)[0].tolist() == [11]  # 12: future
    # Feedback: item 11 is shown 300 times and never played, item 12 played and liked 30 times.
    n = 300
    world_store.record(
        np.ones(n, np.int64), np.full(n, 11), np.zeros(n, np.int64), ["impression"] * n
    )
    world_store.record(
        np.ones(60, np.int64), np.full(60, 12), np.zeros(60, np.int64), ["play", "like"] * 30
    )
    firsts = [channel.retrieve(context(u, [], ts=NOW + u), 2)[0][0] for u in range(1, 21)]
    assert firsts.count(12) == 20
    again = channel.retrieve(context(3, [], ts=NOW + 3), 2)
    assert np.array_equal(again[0], channel.retrieve(context(3, [], ts=NOW + 3), 2)[0])


def test_fresh_prefers_uploads_matching_the_users_taste(world, world_store):
    world.items["upload_ts"][[3, 10]] = 55 * DAY  # item 4 (category 2) and 11 (category 3)
    tables = build_tables(world, world.interactions)
    channel = FreshChannel(tables["fresh"], world_store, window_s=10 * DAY, taste_floor=0.01)
    firsts = [channel.retrieve(context(u, [7, 8], ts=NOW + u), 3)[0][0] for u in range(1, 21)]
    assert firsts.count(4) == 0  # category 2 matches nothing the user played


def test_popular_is_the_same_trending_list_for_everyone(world):
    channel = PopularChannel(build_tables(world, world.interactions)["popular"])
    ids, scores = channel.retrieve(context(0, []), 3)
    assert ids[0] == 1  # four plays, the most of any item
    assert np.all(np.diff(scores) <= 0)
    assert np.array_equal(ids, channel.retrieve(context(5, [7]), 3)[0])
