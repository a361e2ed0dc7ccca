"""`cascade data import`: RecBole and CSV / Parquet inputs, external ids kept, and every bad input
named by file, line and column with nothing written."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade.data import DataError, load_dataset, ml100k, staging, tabular
from cascade.data.assemble import import_dataset
from cascade.data.import_cli import main as import_main
from cascade.data.mapping import load_mapping
from cascade.data.schema import SCHEMA, load
from cascade.ids import IdMap

EXAMPLES = Path(__file__).parents[3] / "examples"

EVENTS = """\
user,song,action,when
alice,song-9,play,2026-01-05T10:00:00
bob,song-9,like,2026-01-05T11:00:00
alice,song-2,play,2026-01-06T09:30:00
carol,song-2,play,2026-01-07T08:00:00
bob,song-3,play,2026-01-07T12:00:00
alice,song-3,like,2026-01-08T10:00:00
"""
SONGS = """\
song,title,artist,genres
song-9,Nine,dj-nova,rock|pop
song-2,Two,the-owls,jazz
song-3,Three,dj-nova,rock
"""
MAPPING = """\
[interactions]
file = "events.csv"
user = "user"
item = "song"
time = "when"
time_format = "%Y-%m-%dT%H:%M:%S"
event = "action"
events = { play = "play", like = "like" }

[items]
file = "songs.csv"
item = "song"
title = "title"
creator = "artist"
categories = "genres"
"""


def write_input(folder: Path, events: str = EVENTS, songs: str = SONGS, mapping: str = MAPPING):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.csv").write_text(events)
    (folder / "songs.csv").write_text(songs)
    (folder / "mapping.toml").write_text(mapping)
    return folder / "mapping.toml"


def run_import(tmp_path: Path, name: str = "mine", strict: bool = False, **files):
    mapping = load_mapping(write_input(tmp_path / "in", **files))
    mapping.strict = strict
    return import_dataset(name, mapping, tmp_path / "data", progress=False)


def nothing_written(tmp_path: Path) -> bool:
    data = tmp_path / "data"
    return not data.exists() or not any(data.iterdir())


def test_string_ids_round_trip(tmp_path):
    dataset, report = run_import(tmp_path)
    loaded = load_dataset("mine", tmp_path / "data")
    users = IdMap.load(tmp_path / "data" / "mine" / "ids" / "users.parquet", capacity=10)
    items = IdMap.load(tmp_path / "data" / "mine" / "ids" / "items.parquet", capacity=10)
    inter = loaded.interactions
    rows = list(
        zip(
            users.external(inter["user_id"]),
            items.external(inter["item_id"]),
            inter["like"].tolist(),
            strict=True,
        )
    )
    assert rows == [
        ("alice", "song-9", False),
        ("bob", "song-9", True),
        ("alice", "song-2", False),
        ("carol", "song-2", False),
        ("bob", "song-3", False),
        ("alice", "song-3", True),
    ]
    assert inter["ts"][0] == 1767607200  # 2026-01-05T10:00:00Z
    # Items keep the items file's order; users their first sight.
    assert items.external(loaded.items["item_id"]) == ["song-9", "song-2", "song-3"]
    assert users.lookup(["alice", "bob", "carol", "dave"]).tolist() == [1, 2, 3, 0]
    assert loaded.meta["categories"] == ["none", "jazz", "pop", "rock"]
    assert loaded.items["categories"][0, :2].tolist() == [3, 2]  # song-9: rock|pop
    assert loaded.creators["name"].tolist() == ["dj-nova", "the-owls"]
    assert loaded.items["creator_id"].tolist() == [1, 2, 1]
    assert loaded.meta["tasks"] == ["play", "like"]
    assert len(loaded.follows["follower_id"]) == 0 and not report.dropped
    assert set(SCHEMA) <= {p.stem for p in (tmp_path / "data" / "mine").glob("*.parquet")}


def test_parquet_with_int64_ids_matches_csv(tmp_path):
    big = [9_007_199_254_740_993, 5, 9_007_199_254_740_993]
    table = pa.table(
        {
            "u": pa.array(big, pa.int64()),
            "i": pa.array([7, 8, 8], pa.int64()),
            "t": pa.array([3, 1, 2], pa.int64()),
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "log.parquet")
    (tmp_path / "in" / "m.toml").write_text(
        '[interactions]\nfile = "log.parquet"\nuser = "u"\nitem = "i"\ntime = "t"\n'
    )
    import_dataset("p", load_mapping(tmp_path / "in" / "m.toml"), tmp_path / "data", progress=False)
    users = IdMap.load(tmp_path / "data" / "p" / "ids" / "users.parquet", capacity=5)
    loaded = load(tmp_path / "data" / "p")
    assert users.external(loaded.interactions["user_id"]) == [str(b) for b in big]
    assert users.lookup([9_007_199_254_740_993, "9007199254740993"]).tolist() == [1, 1]
    assert loaded.items["upload_ts"].tolist() == [3, 1]  # first interaction of items 7 and 8


def test_wrong_delimiter_names_the_file_and_the_delimiter(tmp_path):
    events = EVENTS.replace(",", ";")
    with pytest.raises(DataError) as error:
        run_import(tmp_path, events=events)
    message = str(error.value)
    assert f"{tmp_path / 'in' / 'events.csv'} line 1" in message
    assert "the delimiter is ',' but the line contains ';'" in message
    assert nothing_written(tmp_path)


def test_missing_column_names_it(tmp_path):
    mapping = MAPPING.replace('time = "when"', 'time = "ts"')
    with pytest.raises(DataError) as error:
        run_import(tmp_path, mapping=mapping)
    assert str(error.value).startswith(
        f"{tmp_path / 'in' / 'events.csv'} line 1, column 'ts' (the time): not in the header"
    )
    assert nothing_written(tmp_path)


def test_unparsable_timestamp_names_line_and_column(tmp_path):
    events = EVENTS.replace("2026-01-07T08:00:00", "2026-13-07 8am")
    with pytest.raises(DataError) as error:
        run_import(tmp_path, events=events)
    assert str(error.value) == (
        f"{tmp_path / 'in' / 'events.csv'} line 5, column 'when': cannot parse "
        "'2026-13-07 8am' as a time in the format '%Y-%m-%dT%H:%M:%S'"
    )
    assert nothing_written(tmp_path)


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match=r"events\.csv line 1: the file is empty"):
        run_import(tmp_path, events="")
    assert nothing_written(tmp_path)
    with pytest.raises(DataError, match=r"events\.csv line 2: no data rows after the header"):
        run_import(tmp_path, events="user,song,action,when\n")
    assert nothing_written(tmp_path)


def test_a_row_with_too_many_fields_names_its_line(tmp_path):
    events = EVENTS.replace("carol,song-2,play,", "carol,song-2,play,extra,")
    with pytest.raises(DataError) as error:
        run_import(tmp_path, events=events)
    assert str(error.value).startswith(
        f"{tmp_path / 'in' / 'events.csv'} line 5: expected 4 fields separated by ','"
    )
    assert nothing_written(tmp_path)


def test_duplicate_rows_are_dropped_with_a_count_or_an_error_when_strict(tmp_path):
    events = EVENTS + "bob,song-9,like,2026-01-05T11:00:00\n" * 2
    dataset, report = run_import(tmp_path, events=events)
    reason = "duplicate row (same user, item, time, event and rating as an earlier row)"
    assert report.dropped == {reason: 2}
    assert report.first[reason] == f"{tmp_path / 'in' / 'events.csv'} line 8"
    assert len(dataset.interactions["user_id"]) == 6
    with pytest.raises(DataError) as error:
        run_import(tmp_path, name="strict", strict=True, events=events)
    assert str(error.value).startswith(f"{tmp_path / 'in' / 'events.csv'} line 8: {reason}")
    assert not (tmp_path / "data" / "strict").exists()


def test_duplicates_are_found_when_the_row_hashes_are_sorted_in_several_slices(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(staging, "HASH_SLICE_ROWS", 2)  # 9 rows: 5 slices of hashes
    events = EVENTS + "bob,song-9,like,2026-01-05T11:00:00\n" * 2 + EVENTS.splitlines()[1] + "\n"
    dataset, report = run_import(tmp_path, events=events)
    reason = "duplicate row (same user, item, time, event and rating as an earlier row)"
    assert report.dropped == {reason: 3}
    assert report.first[reason] == f"{tmp_path / 'in' / 'events.csv'} line 8"
    assert len(dataset.interactions["user_id"]) == 6


def test_events_for_unknown_items_are_dropped_or_an_error_when_strict(tmp_path):
    events = EVENTS + "carol,song-404,play,2026-01-09T10:00:00\n"
    dataset, report = run_import(tmp_path, events=events)
    reason = "item not in the items file (column 'song')"
    assert report.dropped == {reason: 1}
    assert report.first[reason] == f"{tmp_path / 'in' / 'events.csv'} line 8"
    assert len(dataset.interactions["user_id"]) == 6
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError) as error:
        run_import(tmp_path, strict=True, events=events)
    assert str(error.value).startswith(f"{tmp_path / 'in' / 'events.csv'} line 8: {reason}")
    assert nothing_written(tmp_path)


def test_an_item_listed_twice_names_both_lines(tmp_path):
    with pytest.raises(DataError) as error:
        run_import(tmp_path, songs=SONGS + "song-2,Again,x,jazz\n")
    path = tmp_path / "in" / "songs.csv"
    assert str(error.value) == (
        f"{path} line 5, column 'song': item id 'song-2' is listed twice (first at {path} line 3)"
    )
    assert nothing_written(tmp_path)


def test_a_mapping_typo_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"\[interactions\]: unknown keys \['tiem'\]"):
        run_import(tmp_path, mapping=MAPPING.replace('time = "when"', 'time = "when"\ntiem = 1'))


def test_an_existing_dataset_is_kept_unless_forced(tmp_path):
    run_import(tmp_path)
    before = (tmp_path / "data" / "mine" / "interactions.parquet").read_bytes()
    with pytest.raises(DataError, match="exists: choose another --name or pass --force"):
        run_import(tmp_path, events=EVENTS.replace("carol", "dave"))
    assert (tmp_path / "data" / "mine" / "interactions.parquet").read_bytes() == before
    # A failed forced import leaves the old dataset in place, and nothing beside it.
    argv = ["--name", "mine", "--mapping", str(tmp_path / "in" / "mapping.toml")]
    argv += ["--data-dir", str(tmp_path / "data"), "--force", "--quiet"]
    (tmp_path / "in" / "events.csv").write_text(EVENTS.replace("2026-01-06", "yesterday"))
    assert import_main(argv) == 2
    assert (tmp_path / "data" / "mine" / "interactions.parquet").read_bytes() == before
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine"]


def test_unknown_dataset_name_says_how_to_import(tmp_path):
    with pytest.raises(DataError, match=r"cascade data import --name mystery"):
        load_dataset("mystery", tmp_path)


def test_tiny_music_example_imports(tmp_path):
    mapping = load_mapping(EXAMPLES / "tiny-music" / "mapping.toml")
    dataset, report = import_dataset("tiny-music", mapping, tmp_path, progress=False)
    assert report.dropped == {"event value not mapped (column 'action')": 200}  # the skips
    assert len(dataset.follows["follower_id"]) == 65
    assert dataset.meta["tasks"] == ["play", "complete", "like", "share"]
    users = IdMap.load(tmp_path / "tiny-music" / "ids" / "users.parquet", capacity=100)
    # Artists who are users own their creator account.
    owners = users.external(dataset.creators["user_id"][dataset.creators["user_id"] > 0])
    assert set(owners) <= {"dj-nova", "the-owls", "mira-keys", "lofi-lou", "big-sur", "cold-cuts"}
    assert len(owners) == 6


@pytest.fixture(scope="module")
def ml100k_raw(tmp_path_factory) -> Path:
    """ml-100k's atomic files: the repository's cached copy when `cascade data` has run, else
    downloaded from the recbole wheel (as tests/cascade/data/test_ml100k.py does)."""
    cached = Path("data/raw/ml-100k")
    if all((cached / name).exists() for name in ml100k.RAW_FILES):
        return cached
    raw = tmp_path_factory.mktemp("raw") / "ml-100k"
    ml100k.fetch_raw(raw)
    return raw


def test_recbole_ml100k_through_the_generic_path_equals_the_builtin_source(ml100k_raw, tmp_path):
    builtin = ml100k.build(ml100k_raw)
    mapping = load_mapping(EXAMPLES / "recbole-ml-100k.toml", recbole_dir=ml100k_raw)
    imported, report = import_dataset("ml-100k-recbole", mapping, tmp_path, progress=False)
    imported = load(tmp_path / "ml-100k-recbole")
    for table, columns in SCHEMA.items():
        for column in columns:
            a, b = builtin.table(table)[column], imported.table(table)[column]
            assert a.dtype == b.dtype and a.shape == b.shape, (table, column)
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (table, column)
    for key in ("categories", "occupations", "tasks", "negatives_per_positive"):
        assert imported.meta[key] == builtin.meta[key]
    assert not report.dropped
    # ml-100k's ids are 1..n: the saved maps are the identity (no string stored).
    users = IdMap.load(tmp_path / "ml-100k-recbole" / "ids" / "users.parquet", capacity=943)
    assert len(users) == 943 and users.lookup([196]).tolist() == [196]


def test_cli_import_prints_the_summary(tmp_path, capsys):
    mapping = write_input(tmp_path / "in")
    argv = ["data", "import", "--name", "cli", "--mapping", str(mapping), "--quiet"]
    from app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--data-dir", str(tmp_path / "data")])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "users         3" in out and "interactions  6" in out
    assert "time span     2026-01-05 .. 2026-01-08" in out
    assert textwrap.dedent(out).count("density") == 1


def test_train_and_up_take_an_imported_name_and_say_how_to_import_a_missing_one(tmp_path, capsys):
    from app.cli import main
    from app.stack import StackError, ensure_bundle

    with pytest.raises(StackError, match=r"import it with `cascade data import --name mine"):
        ensure_bundle(tmp_path / "artifacts", tmp_path / "data", "mine")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "all", "--dataset", "mine", "--data-dir", str(tmp_path / "data")])
    assert exit_.value.code == 2
    assert "bring your own with `cascade data import --name mine ...`" in capsys.readouterr().err


CONTENT_SONGS = """\
song,title,artist,genres,embedding
song-9,Nine,dj-nova,rock|pop,0.5 -1.0 2.0
song-2,Two,the-owls,jazz,1.0 0.0 0.25
song-3,Three,dj-nova,rock,
"""
CONTENT_MAPPING = MAPPING + 'content = "embedding"\n'


def test_a_content_column_becomes_the_items_content_vectors(tmp_path):
    run_import(tmp_path, songs=CONTENT_SONGS, mapping=CONTENT_MAPPING)
    loaded = load_dataset("mine", tmp_path / "data")
    titles = list(loaded.items["title"])
    content = loaded.items["content"]
    assert content.dtype == np.float32 and content.shape == (3, 3)
    np.testing.assert_array_equal(content[titles.index("Nine")], [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(content[titles.index("Three")], [0, 0, 0])  # empty: unknown


def test_a_dataset_without_content_has_no_content_column(tmp_path):
    run_import(tmp_path)
    assert "content" not in load_dataset("mine", tmp_path / "data").items


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("1.0 2.0", "2 content values, the rows before have 3"),
        ("1.0 loud 2.0", "content value 'loud' is not a number"),
        ("1.0 nan 2.0", "content values must be finite numbers"),
    ],
)
def test_a_bad_content_row_names_its_file_and_line(tmp_path, cell, reason):
    songs = CONTENT_SONGS.replace("rock,\n", f"rock,{cell}\n")
    with pytest.raises(DataError) as error:
        run_import(tmp_path, songs=songs, mapping=CONTENT_MAPPING)
    path = tmp_path / "in" / "songs.csv"
    assert str(error.value) == f"{path} line 4, column 'embedding': {reason}"
    assert nothing_written(tmp_path)


UNIX_MAPPING = """\
[interactions]
file = "events.csv"
user = "user"
item = "song"
time = "when"
rating = "stars"
"""
UNIX_EVENTS = """\
user,song,when,stars
alice,song-9,1767607200,4
bob,song-9,1767610800,
carol,song-2,1767690000,3.5
"""


def run_unix_import(tmp_path: Path, events: str):
    return run_import(tmp_path, events=events, mapping=UNIX_MAPPING)


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "1767610800",
            "soon",
            "line 3, column 'when': cannot parse 'soon' as a Unix time in seconds",
        ),
        ("1767690000", "", "line 4, column 'when': no time given"),
        ("3.5", "five", "line 4, column 'stars': cannot parse 'five' as a number"),
    ],
    ids=["time-not-a-number", "time-missing", "rating-not-a-number"],
)
def test_a_bad_value_names_line_and_column(tmp_path, old, new, message):
    with pytest.raises(DataError) as error:
        run_unix_import(tmp_path, UNIX_EVENTS.replace(old, new))
    assert str(error.value) == f"{tmp_path / 'in' / 'events.csv'} {message}"
    assert nothing_written(tmp_path)


def test_ratings_are_numbers_and_an_empty_one_is_nan(tmp_path):
    dataset, report = run_unix_import(tmp_path, UNIX_EVENTS)
    rating = load(tmp_path / "data" / "mine").interactions["rating"]
    assert rating[[0, 2]].tolist() == [4.0, 3.5] and np.isnan(rating[1])
    assert dataset.meta["tasks"] == ["play", "like"]  # rating >= 4 is a like


def test_a_row_with_too_few_fields_names_its_line(tmp_path):
    events = UNIX_EVENTS.replace("bob,song-9,1767610800,\n", "bob,song-9\n")
    with pytest.raises(DataError) as error:
        run_unix_import(tmp_path, events)
    assert str(error.value).startswith(
        f"{tmp_path / 'in' / 'events.csv'} line 3: expected 4 fields separated by ','"
    )
    assert nothing_written(tmp_path)


def test_a_text_rating_in_parquet_that_is_not_a_number_names_its_row(tmp_path):
    table = pa.table(
        {
            "u": pa.array(["a", "b", "c"]),
            "i": pa.array(["x", "y", "x"]),
            "t": pa.array([1, 2, 3], pa.int64()),
            "r": pa.array(["4", "", "lots"]),
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "log.parquet")
    (tmp_path / "in" / "m.toml").write_text(
        '[interactions]\nfile = "log.parquet"\nuser = "u"\nitem = "i"\ntime = "t"\nrating = "r"\n'
    )
    with pytest.raises(DataError) as error:
        import_dataset("p", load_mapping(tmp_path / "in" / "m.toml"), tmp_path / "data")
    assert str(error.value) == (
        f"{tmp_path / 'in' / 'log.parquet'} row 3, column 'r': cannot parse 'lots' as a number"
    )
    assert nothing_written(tmp_path)


def test_ids_padded_with_spaces_are_one_id_and_their_repeats_are_duplicates(tmp_path):
    events = UNIX_EVENTS + " alice ,song-9,1767607200,4\n"
    dataset, report = run_unix_import(tmp_path, events)
    reason = "duplicate row (same user, item, time, event and rating as an earlier row)"
    assert report.dropped == {reason: 1}
    assert report.first[reason] == f"{tmp_path / 'in' / 'events.csv'} line 5"
    assert len(dataset.users["user_id"]) == 3


def test_impressions_sampled_in_several_slices_of_users_are_each_slice_in_file_order(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(staging, "SLICE_ROWS", 2)  # 6 interactions: 3 slices of users
    dataset, _ = run_import(tmp_path)
    log = {c: np.asarray(dataset.interactions[c]) for c in dataset.interactions}
    generators = np.random.default_rng(0).spawn(3)  # the mapping's default seed, per slice
    parts = []
    for part, rng in enumerate(generators):
        rows = log["user_id"] % 3 == part
        parts.append(
            ml100k.sample_impressions({c: v[rows] for c, v in log.items()}, dataset.items, 4, rng)
        )
    for column in ("user_id", "item_id", "ts", "click", "like"):
        expected = np.concatenate([p[column] for p in parts])
        assert dataset.impressions[column].tolist() == expected.tolist(), column


def test_impressions_are_the_same_when_the_log_is_spread_over_slices_in_many_batches(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(staging, "SLICE_ROWS", 2)  # 6 interactions: 3 slices of users
    whole, _ = run_import(tmp_path / "whole")
    monkeypatch.setattr(staging, "WRITE_ROWS", 1)  # written a row at a time: blocks of one row
    batched, _ = run_import(tmp_path / "batched")
    for column in ("user_id", "item_id", "ts", "click", "complete", "like", "share"):
        expected = whole.impressions[column].tolist()
        assert batched.impressions[column].tolist() == expected, column


def test_a_log_read_in_many_batches_imports_as_in_one(tmp_path, monkeypatch):
    # Ids first seen, repeated and padded in later batches; a duplicate of a row many batches back.
    events = (
        EVENTS
        + "dave,song-3,play,2026-01-09T10:00:00\n"
        + " bob ,song-2,like,2026-01-09T11:00:00\n"
        + "alice,song-9,play,2026-01-05T10:00:00\n"
        + "erin,song-9,skip,2026-01-09T12:00:00\n"
    )
    whole, whole_report = run_import(tmp_path / "whole", events=events)
    monkeypatch.setattr(tabular, "BATCH_BYTES", 64)  # a line or two per batch
    batched, batched_report = run_import(tmp_path / "batched", events=events)
    assert batched_report.dropped == whole_report.dropped
    lines = {reason: where.split("/batched/")[1] for reason, where in batched_report.first.items()}
    assert lines == {
        reason: where.split("/whole/")[1] for reason, where in whole_report.first.items()
    }
    assert sum(batched_report.dropped.values()) == 2  # the repeat and the unmapped `skip`
    assert batched.users["user_id"].tolist() == whole.users["user_id"].tolist()
    for table in ("interactions", "impressions"):
        for column in SCHEMA[table]:
            expected = whole.table(table)[column]
            assert np.array_equal(
                batched.table(table)[column], expected, equal_nan=column == "rating"
            )
    users = IdMap.load(tmp_path / "batched" / "data" / "mine" / "ids" / "users.parquet", 10)
    assert users.lookup(["alice", "bob", "carol", "dave", "erin"]).tolist() == [1, 2, 3, 4, 5]
