"""The synthetic world: valid, seeded, and the biases and truths it promises are really there."""

import numpy as np
import pytest

from cascade.data import schema
from cascade.data.synthetic import (
    DAY,
    SyntheticConfig,
    _Clock,
    _Sampler,
    examination,
    generate,
    outcome_probabilities,
)

CONFIG = SyntheticConfig(n_users=600, n_items=400, seed=3)


@pytest.fixture(scope="module")
def world():
    return generate(CONFIG, progress=False)


def _assert_same_tables(a, b):
    for name in schema.TABLES:
        for column in schema.SCHEMA[name]:
            np.testing.assert_array_equal(a.table(name)[column], b.table(name)[column])


def test_valid_schema_and_round_trip(world, tmp_path):
    world.validate()
    schema.save(world, tmp_path / "synthetic")
    loaded = schema.load(tmp_path / "synthetic")
    _assert_same_tables(world, loaded)
    assert loaded.meta == world.meta
    assert loaded.truth.keys() == world.truth.keys()
    for key, values in world.truth.items():
        np.testing.assert_array_equal(loaded.truth[key], values)


def test_sizes_ids_and_meta(world):
    assert world.n_users == 601 and world.n_items == 401
    assert len(world.creators["creator_id"]) == 400 // 20
    assert world.meta["categories"][0] == "none" and len(world.meta["categories"]) == 21
    assert world.meta["categories"][1:4] == ["pop", "rock", "hip-hop"]
    assert world.meta["tasks"] == ["click", "play", "complete", "like", "share"]
    assert world.meta["config"]["seed"] == CONFIG.seed
    n_categories = (world.items["categories"] > 0).sum(axis=1)
    assert n_categories.min() == 1 and n_categories.max() == 3
    assert (world.items["categories"][:, 0] > 0).all()  # primary category first, then padding
    accounts = world.creators["user_id"]
    assert len(np.unique(accounts)) == len(accounts) and accounts.min() >= 1
    truth = world.truth
    assert truth["user_taste"].shape == (601, CONFIG.dim)
    assert truth["item_latent"].shape == (401, CONFIG.dim)
    assert truth["item_quality"].shape == (401,)
    assert len(truth["impression_utility"]) == len(world.impressions["user_id"])
    assert world.items["title"][0] == f"Track 1 by Artist {world.items['creator_id'][0]}"


def test_same_seed_same_world_other_seed_other_world(world):
    _assert_same_tables(world, generate(CONFIG, progress=False))
    other = generate(SyntheticConfig(n_users=600, n_items=400, seed=4), progress=False)
    assert not np.array_equal(other.items["creator_id"], world.items["creator_id"])


def test_items_never_shown_before_upload_and_uploads_keep_coming(world):
    impressions, upload = world.impressions, world.items["upload_ts"]
    assert (upload[impressions["item_id"] - 1] <= impressions["ts"]).all()
    start, end = CONFIG.start_ts, CONFIG.start_ts + CONFIG.days * DAY
    assert impressions["ts"].min() >= start and impressions["ts"].max() < end
    new = upload >= start
    assert 0.6 < new.mean() < 0.8  # 30% of the catalog predates the log
    shown_new = np.isin(np.flatnonzero(new) + 1, impressions["item_id"])
    assert shown_new.mean() > 0.5  # new uploads do reach users (cold start is exercised)


def test_pages_are_full_and_distinct(world):
    page = world.impressions["item_id"].reshape(-1, CONFIG.page_size)
    position = world.impressions["position"].reshape(-1, CONFIG.page_size)
    assert (position == np.arange(CONFIG.page_size)).all()
    ordered = np.sort(page, axis=1)
    assert not (ordered[:, 1:] == ordered[:, :-1]).any()


def test_label_chain(world):
    imp = world.impressions
    assert not (imp["play"] & ~imp["click"]).any()
    assert not (imp["complete"] & ~imp["play"]).any()
    assert not ((imp["like"] | imp["share"]) & ~imp["complete"]).any()
    rates = [imp[event].mean() for event in ("click", "play", "complete", "like")]
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    assert 0 < imp["share"].mean() < imp["like"].mean()


def test_interactions_are_the_played_impressions(world):
    played = world.impressions["play"]
    for column in ("user_id", "item_id", "ts", "complete", "like", "share"):
        np.testing.assert_array_equal(world.interactions[column], world.impressions[column][played])
    assert world.interactions["play"].all() and np.isnan(world.interactions["rating"]).all()


def test_position_bias(world):
    imp, position = world.impressions, world.impressions["position"]
    ctr = np.bincount(position, weights=imp["click"]) / np.bincount(position)
    assert ctr[0] > 3 * ctr[-1]
    # Clicks per position match the truth (examination x attractiveness) within sampling noise,
    # and attractiveness alone (no position bias) would predict far more clicks at the bottom.
    attractiveness = outcome_probabilities(world.truth["impression_utility"])["click"]
    unbiased = np.bincount(position, weights=attractiveness)
    expected = unbiased * examination(CONFIG)
    observed = np.bincount(position, weights=imp["click"])
    assert (np.abs(observed - expected) < 4 * np.sqrt(expected) + 1).all()
    assert observed[-1] < 0.5 * unbiased[-1]
    np.testing.assert_array_equal(world.truth["position_examination"], examination(CONFIG))


def test_popularity_bias(world):
    popularity = world.truth["item_popularity"][1:]
    order = np.argsort(-popularity)
    shown = np.bincount(world.impressions["item_id"], minlength=world.n_items)[1:]
    top, bottom_half = order[: len(order) // 10], order[len(order) // 2 :]
    assert shown[top].sum() / shown.sum() > 0.2  # a tenth of the catalog, over a fifth of exposure
    assert shown[top].mean() > 3 * shown[bottom_half].mean()


def test_higher_utility_clicks_more(world):
    utility, click = world.truth["impression_utility"], world.impressions["click"]
    quartile = np.searchsorted(np.quantile(utility, [0.25, 0.5, 0.75]), utility)
    ctr = np.bincount(quartile, weights=click) / np.bincount(quartile)
    assert (np.diff(ctr) > 0).all() and ctr[-1] > 5 * ctr[0]


def test_follow_graph_homophily_and_attachment(world):
    follows, cluster = world.follows, world.truth["user_cluster"]
    assert not (follows["follower_id"] == follows["followee_id"]).any()
    keys = follows["follower_id"] * world.n_users + follows["followee_id"]
    assert len(np.unique(keys)) == len(keys)
    same = (cluster[follows["follower_id"]] == cluster[follows["followee_id"]]).mean()
    random = ((np.bincount(cluster[1:]) / CONFIG.n_users) ** 2).sum()
    assert same > 0.7 and same > 4 * random
    followers = np.bincount(follows["followee_id"], minlength=world.n_users)
    is_creator = np.zeros(world.n_users, dtype=bool)
    is_creator[world.creators["user_id"]] = True
    assert followers[is_creator].mean() > 3 * followers[1:][~is_creator[1:]].mean()


def test_profile_features_follow_taste_clusters(world):
    cluster, region = world.truth["user_cluster"][1:], world.users["region"]
    counts = np.zeros((CONFIG.n_clusters, CONFIG.n_regions + 1))
    np.add.at(counts, (cluster, region), 1)
    in_top_region = counts.max(axis=1).sum() / CONFIG.n_users
    assert in_top_region > 0.4  # uniform regions would put ~1/50 there


def test_followed_creators_show_up_in_the_feed(world):
    source = world.truth["impression_source"]
    assert (source == 2).mean() > 0.05  # the "social" source
    followed = world.truth["impression_followed"]
    assert followed[source == 2].mean() > 0.9


def test_sampler_respects_group_window_and_weights():
    config = SyntheticConfig()
    clock = _Clock(config)
    start = config.start_ts
    group = np.array([1, 1, 1, 2, 2])
    ts = np.array([start, start + 10, start + 20, start, start + 5])
    weight = np.array([1.0, 3.0, 100.0, 1.0, 1.0])
    sampler = _Sampler(clock, group, ts, weight, np.arange(1, 6))
    n = 20_000
    rng = np.random.default_rng(0)
    drawn = sampler.draw(
        np.ones(n, np.int64), np.full(n, clock.t0), np.full(n, start + 15), rng.random(n)
    )
    assert set(np.unique(drawn)) == {1, 2}  # item 3 is not yet eligible
    assert abs((drawn == 2).mean() - 0.75) < 0.02
    empty = sampler.draw(
        np.array([2, 3]), np.full(2, clock.t0), np.array([start - 1, start]), np.full(2, 0.5)
    )
    np.testing.assert_array_equal(empty, [0, 0])  # nothing eligible yet / no such group


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="page_size"):
        generate(SyntheticConfig(n_users=10, n_items=10, page_size=0), progress=False)
