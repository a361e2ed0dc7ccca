"""The id map: dense ids for external ids, bounded, never sized by an id's value."""

import numpy as np
import pytest

from cascade.ids import IdMap, IdSpaceFull, external_key


def test_identity_ids_map_to_themselves_and_cost_no_memory():
    ids = IdMap(capacity=10, identity=5)
    assert ids.lookup([1, "5", 3]).tolist() == [1, 5, 3]
    assert ids.lookup([6, "05", 0, -1, "x"]).tolist() == [0, 0, 0, 0, 0]
    assert ids.external([2, 5]) == ["2", "5"]
    assert len(ids) == 5


def test_new_ids_get_the_next_dense_id_in_order_of_first_sight():
    ids = IdMap(capacity=10, identity=3, known=["alice"])
    assert ids.lookup(["alice"]).tolist() == [4]
    assert ids.assign(["bob", 99999999, "bob", 2]).tolist() == [5, 6, 5, 2]
    assert ids.external([5, 6, 4]) == ["bob", "99999999", "alice"]
    assert ids.lookup(["99999999"]).tolist() == [6]  # an int and its decimal text are one id


def test_a_full_map_refuses_the_whole_batch():
    ids = IdMap(capacity=4, identity=2)
    ids.assign(["a"])
    with pytest.raises(IdSpaceFull, match="2 new ids do not fit: 3 of 4"):
        ids.assign(["b", "c"])
    assert len(ids) == 3 and ids.lookup(["b"]).tolist() == [0]
    assert ids.assign(["b", "a"]).tolist() == [4, 3]


def test_a_huge_id_allocates_nothing_by_its_value():
    ids = IdMap(capacity=1_000, identity=943)
    assert ids.assign([2**63 - 1]).tolist() == [944]
    assert len(ids) == 944


def test_bad_ids_and_bad_dense_ids_are_errors():
    with pytest.raises(TypeError):
        external_key(1.5)
    with pytest.raises(ValueError):
        external_key("")
    with pytest.raises(ValueError, match="not in the map"):
        IdMap(capacity=5, identity=2).external([3])
    with pytest.raises(ValueError, match="listed twice"):
        IdMap(capacity=5, known=["a", "a"])
    with pytest.raises(ValueError, match="capacity"):
        IdMap(capacity=1, identity=2)


def test_save_and_load_round_trip(tmp_path):
    ids = IdMap(capacity=100, identity=10, known=["u-1"])
    ids.assign(["u-2", 77])
    ids.save(tmp_path / "users.parquet")
    loaded = IdMap.load(tmp_path / "users.parquet", capacity=100)
    assert len(loaded) == 13
    assert loaded.lookup(["u-1", "u-2", "77", "10"]).tolist() == [11, 12, 13, 10]
    assert np.array_equal(loaded.external([11, 12, 13]), ["u-1", "u-2", "77"])


def test_for_dataset_uses_the_saved_map_or_the_identity(tmp_path):
    assert IdMap.for_dataset(tmp_path / "none.parquet", 5, 10).lookup(["5"]).tolist() == [5]
    IdMap(capacity=10, known=["a", "b"]).save(tmp_path / "users.parquet")
    assert IdMap.for_dataset(tmp_path / "users.parquet", 2, 10).lookup(["b"]).tolist() == [2]
    with pytest.raises(ValueError, match="2 ids for 3 dataset rows"):
        IdMap.for_dataset(tmp_path / "users.parquet", 3, 10)


def test_restore_takes_back_logged_ids_in_any_order_and_fills_gaps():
    ids = IdMap(capacity=20, identity=5)
    # As a log of two gateways' threads might hold them: out of order, a repeat, and dense id 7
    # assigned to a Feedback whose append failed (never logged).
    added = ids.restore([9, 6, 8, 6, 3], ["x", "99999999", "y", "99999999", "3"])
    assert added == 4
    assert ids.lookup(["99999999", "y", "x", 3]).tolist() == [6, 8, 9, 3]
    assert ids.assign(["new"]).tolist() == [10]  # after every restored id
    assert ids.lookup(["7"]).tolist() == [0]  # the gap holds no client's id
    with pytest.raises(ValueError, match="two external ids"):
        IdMap(capacity=20, identity=5).restore([6, 6], ["a", "b"])
    with pytest.raises(ValueError, match="two dense ids"):
        ids.restore([11], ["x"])
    with pytest.raises(IdSpaceFull):
        IdMap(capacity=8, identity=5).restore([9], ["z"])
