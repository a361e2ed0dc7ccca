"""MovieLens-100K mapping, on hand-written atomic files and once on the real wheel."""

import numpy as np
import pytest

from cascade.data import DataError, load_dataset, ml100k, prepare

RAW = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t1\t5\t100\n1\t2\t3\t200\n2\t1\t4\t150\n2\t3\t2\t300\n",
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Comedy\n2\tHeat\t1995\tAction\n3\tFargo\t1996\tCrime Drama\n",
    "ml-100k.kg": "head_id:token\trelation_id:token\ttail_id:token\n"
    "m.toy\tfilm.film.directed_by\tm.lasseter\nm.heat\tfilm.film.directed_by\tm.mann\n"
    "m.toy\tfilm.film.actor\tm.hanks\n",
    "ml-100k.link": "item_id:token\tentity_id:token\n1\tm.toy\n2\tm.heat\n",
}


@pytest.fixture
def raw_dir(tmp_path):
    for name, text in RAW.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_mapping_to_common_schema(raw_dir):
    dataset = ml100k.build(raw_dir, negatives_per_positive=1, seed=0)
    dataset.validate()
    inter = dataset.interactions
    assert inter["like"].tolist() == [True, False, True, False]  # rating >= 4
    assert inter["play"].all() and not inter["complete"].any()
    items = dataset.items
    # Directors become creators; Fargo has no director in the graph.
    assert dataset.creators["name"].tolist() == ["m.lasseter", "m.mann"]
    assert items["creator_id"].tolist() == [1, 2, 0]
    assert items["upload_ts"].tolist() == [100, 200, 300]  # first rating time
    names = dataset.meta["categories"]
    assert [names[c] for c in items["categories"][0] if c] == ["Animation", "Comedy"]
    assert dataset.users["gender"].tolist() == [1, 2]
    assert dataset.users["region"].tolist() == [9, 0]  # Canadian zip -> unknown region


def test_negatives_existed_and_were_never_consumed(raw_dir):
    dataset = ml100k.build(raw_dir, negatives_per_positive=3, seed=1)
    imp = dataset.impressions
    negatives = ~imp["click"]
    upload = dict(
        zip(dataset.items["item_id"].tolist(), dataset.items["upload_ts"].tolist(), strict=True)
    )
    consumed = set(
        zip(
            dataset.interactions["user_id"].tolist(),
            dataset.interactions["item_id"].tolist(),
            strict=True,
        )
    )
    for user, item, ts in zip(
        imp["user_id"][negatives], imp["item_id"][negatives], imp["ts"][negatives], strict=True
    ):
        assert upload[int(item)] <= ts
        assert (int(user), int(item)) not in consumed
    assert imp["click"].sum() == len(dataset.interactions["user_id"])


def test_missing_file_names_it_and_the_fix(raw_dir):
    (raw_dir / "ml-100k.kg").unlink()
    with pytest.raises(DataError, match=r"ml-100k\.kg is missing: run `cascade data --source"):
        ml100k.build(raw_dir)


def test_corrupt_file_names_it_and_the_fix(raw_dir):
    (raw_dir / "ml-100k.inter").write_text("garbage without a header\n1\t2\n")
    with pytest.raises(
        DataError, match=r"ml-100k\.inter is corrupt .*cascade data --source ml-100k"
    ):
        ml100k.build(raw_dir)


def test_corrupt_saved_table_names_it(tmp_path, raw_dir):
    from cascade.data.schema import load, save

    save(ml100k.build(raw_dir), tmp_path / "ml-100k")
    (tmp_path / "ml-100k" / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"items\.parquet is corrupt"):
        load(tmp_path / "ml-100k")
    with pytest.raises(DataError, match=r"users\.parquet is missing"):
        (tmp_path / "ml-100k" / "users.parquet").unlink()
        load(tmp_path / "ml-100k")


def test_unprepared_dataset_says_which_command(tmp_path):
    with pytest.raises(
        DataError, match=r"meta\.json is missing: run `cascade data --source ml-100k`"
    ):
        load_dataset("ml-100k", tmp_path)


@pytest.mark.network
def test_real_movielens_from_the_wheel(tmp_path, ml100k_raw):
    """Maps the real files of recbole==1.2.1 (downloaded once per session, never installed)."""
    prepare("ml-100k", ml100k_raw(tmp_path))
    dataset = load_dataset("ml-100k", tmp_path)
    assert len(dataset.users["user_id"]) == 943
    assert len(dataset.items["item_id"]) == 1682
    assert len(dataset.interactions["user_id"]) == 100_000
    assert 0.9 < (dataset.items["creator_id"] > 0).mean() < 1.0  # directors known for most films
    assert np.isclose(dataset.interactions["like"].mean(), 0.5537, atol=1e-3)
    clicks = dataset.impressions["click"]
    assert 4 * clicks.sum() - 100 <= (~clicks).sum() <= 4 * clicks.sum()


def test_sampled_impressions_keep_their_values():
    # ml-100k's figures depend on the exact negatives a seed draws: these are pinned.
    log = {
        "user_id": np.array([1, 2, 1, 3, 2, 1]),
        "item_id": np.array([1, 1, 2, 3, 4, 4]),
        "ts": np.array([10, 10, 20, 30, 40, 50]),
        "complete": np.zeros(6, bool),
        "like": np.array([1, 0, 0, 1, 0, 0], bool),
        "share": np.zeros(6, bool),
    }
    items = {"item_id": np.array([1, 2, 3, 4, 5]), "upload_ts": np.array([10, 20, 30, 40, 0])}
    out = ml100k.sample_impressions(log, items, 2, np.random.default_rng(7))
    assert out["user_id"].tolist() == [1, 2, 1, 3, 2, 1, 1, 1, 2, 2, 1, 1, 3, 3, 2, 2, 1, 1]
    assert out["item_id"].tolist() == [1, 1, 2, 3, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 3, 2, 3, 3]
    assert out["ts"].tolist() == [10, 10, 20, 30, 40, 50] + [10] * 4 + [
        20,
        20,
        30,
        30,
        40,
        40,
        50,
        50,
    ]
    assert out["click"].tolist() == [True] * 6 + [False] * 12
    assert out["like"].tolist() == log["like"].tolist() + [False] * 12


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_pair_set_answers_membership_like_a_sorted_search(n):
    rng = np.random.default_rng(n)
    members = rng.integers(0, 10**12, n)
    pairs = ml100k.PairSet(np.r_[members, members[: n // 2]])  # repeats are one member
    asked = np.r_[members, rng.integers(0, 10**12, 5000), members + 1, 0]
    assert pairs.contains(asked).tolist() == np.isin(asked, members).tolist()
