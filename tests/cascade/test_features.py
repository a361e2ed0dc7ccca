"""The feature spec: encoding rules, offline history, serialisation."""

import numpy as np
import pytest

from cascade.features import (
    FeatureSpec,
    build_spec,
    encode_by_id,
    encode_field,
    history_before,
    lookup,
)


def test_buckets_and_out_of_vocabulary(tiny_dataset):
    spec = build_spec(tiny_dataset)
    age = spec.field("age")
    assert encode_field(age, np.array([-1, 0, 17, 18, 30, 99])).tolist() == [0, 1, 1, 2, 3, 7]
    item = spec.field("item_id")
    assert encode_field(item, np.array([1, 12, 13, -5, 0])).tolist() == [1, 12, 0, 0, 0]


def test_lookup_by_id_unknown_rows_are_zero(tiny_dataset):
    spec = build_spec(tiny_dataset)
    items = encode_by_id(spec, "item", tiny_dataset.items, "item_id", tiny_dataset.n_items)
    rows = lookup(items, np.array([3, 0, 999, -1]))
    assert rows["item_id"].tolist() == [3, 0, 0, 0]
    assert rows["categories"][0].tolist() == tiny_dataset.items["categories"][2].tolist()
    assert not rows["categories"][1:].any()


def test_history_before_matches_brute_force(tiny_dataset):
    inter = tiny_dataset.interactions
    users = np.array([1, 2, 3, 6, 1])
    ts = np.array([130, 160, 100, 500, 101])
    history = history_before(inter, users, ts, length=5)
    for row, (user, t) in enumerate(zip(users, ts, strict=True)):
        mine = (inter["user_id"] == user) & (inter["ts"] < t)
        expected = inter["item_id"][mine][np.argsort(-inter["ts"][mine])][:5]
        assert history[row, : len(expected)].tolist() == expected.tolist()
        assert not history[row, len(expected) :].any()


def test_spec_round_trips_and_names_a_mismatch(tiny_dataset):
    spec = build_spec(tiny_dataset)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    wider = build_spec(tiny_dataset, widths={"creator_id": 64})
    assert wider.fingerprint != spec.fingerprint
    with pytest.raises(ValueError, match="creator_id"):
        spec.check_matches(wider, "artifact")
