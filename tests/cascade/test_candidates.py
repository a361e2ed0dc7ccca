from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cascade.candidates import (
    PACKED_MIN,
    Candidates,
    InvalidField,
    channel_bit,
    channel_counts,
    channels_of,
    check_positions,
    from_proto,
    to_proto,
)
from cascade.v1 import common_pb2, rank_pb2


@st.composite
def candidate_arrays(draw):
    n = draw(st.integers(0, 300))
    item_ids = draw(hnp.arrays(np.int64, n))
    scores = draw(hnp.arrays(np.float32, n))  # any float32, NaN and infinities included
    masks = draw(hnp.arrays(np.uint32, n))
    positions = draw(hnp.arrays(np.uint32, n))
    return item_ids, scores, masks, positions


@settings(max_examples=60, deadline=None)
@given(candidate_arrays())
def test_arrays_survive_the_wire_exactly(arrays):
    item_ids, scores, masks, positions = arrays
    wire = to_proto(item_ids, scores, masks, positions).SerializeToString()
    back = from_proto(common_pb2.CandidateList.FromString(wire))
    assert back.item_ids.dtype == np.int64
    assert back.scores.dtype == np.float32
    assert back.channel_masks.dtype == np.uint32
    np.testing.assert_array_equal(back.item_ids, item_ids)
    np.testing.assert_array_equal(
        back.scores.view(np.uint32)[~np.isnan(scores)], scores.view(np.uint32)[~np.isnan(scores)]
    )  # bit-exact, -0.0 too
    assert np.array_equal(np.isnan(back.scores), np.isnan(scores))
    np.testing.assert_array_equal(back.channel_masks, masks)
    np.testing.assert_array_equal(back.channel_positions, positions)


@pytest.mark.parametrize("n", [0, 1, PACKED_MIN - 1, PACKED_MIN, 2000])
def test_long_lists_are_written_byte_for_byte_as_protobuf_writes_them(n):
    """Long lists take the numpy encoder, short ones extend(): the bytes must be protobuf's own
    either way, edge values included (0, varint boundaries, negative ids, the largest mask)."""
    rng = np.random.default_rng(n)
    edges = np.array([0, 1, 127, 128, 16383, 16384, -1, 2**63 - 1, -(2**63)], dtype=np.int64)
    item_ids = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
    item_ids[: min(n, len(edges))] = edges[: min(n, len(edges))]
    scores = rng.standard_normal(n).astype(np.float32)
    masks = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    masks[: min(n, 2)] = [0, 2**32 - 1][: min(n, 2)]
    positions = rng.integers(0, 3000, n, dtype=np.uint32)
    reference = common_pb2.CandidateList()
    reference.item_ids.extend(item_ids.tolist())
    reference.scores.extend(scores.tolist())
    reference.channel_masks.extend(masks.tolist())
    if positions.any():  # all unknown (0): left out
        reference.channel_positions.extend(positions.tolist())
    ours = to_proto(item_ids, scores, masks, positions)
    assert ours.SerializeToString() == reference.SerializeToString()
    only_ids = to_proto(item_ids[:n])
    assert list(only_ids.item_ids) == item_ids.tolist() and not only_ids.scores
    response = rank_pb2.RankResponse()
    response.candidates.item_ids.append(7)  # replaced, not appended to
    to_proto(item_ids, scores, masks, positions, out=response.candidates)
    assert response.candidates == reference


def test_missing_scores_and_masks_read_as_zeros():
    back = from_proto(to_proto(np.array([5, 3, 9])))
    np.testing.assert_array_equal(back.item_ids, [5, 3, 9])
    assert back.scores.dtype == np.float32 and not back.scores.any() and len(back.scores) == 3
    assert back.channel_masks.dtype == np.uint32 and not back.channel_masks.any()
    assert back.channel_positions.dtype == np.uint32 and not back.channel_positions.any()
    empty = from_proto(common_pb2.CandidateList())
    assert [len(a) for a in empty] == [0, 0, 0, 0]


def test_unknown_positions_stay_off_the_wire():
    """All-zero positions (a producer that knows none) cost no bytes, long list or short."""
    for n in (3, PACKED_MIN):
        ids, masks = np.arange(1, n + 1), np.full(n, 2, np.uint32)
        without = to_proto(ids, None, masks).SerializeToString()
        assert to_proto(ids, None, masks, np.zeros(n, np.uint32)).SerializeToString() == without


def test_a_position_without_a_channel_names_the_field():
    msg = common_pb2.CandidateList(item_ids=[4, 7], channel_masks=[2, 0], channel_positions=[1, 3])
    with pytest.raises(InvalidField, match="item 7 .index 1. has position 3") as caught:
        check_positions(from_proto(msg))
    assert caught.value.field == "candidates.channel_positions"
    check_positions(from_proto(common_pb2.CandidateList(item_ids=[4], channel_masks=[2])))


def test_unequal_lengths_name_the_field():
    msg = common_pb2.CandidateList(item_ids=[1, 2, 3], scores=[0.5, 0.1])
    with pytest.raises(InvalidField) as caught:
        from_proto(msg, field="candidates")
    assert caught.value.field == "candidates.scores"
    msg = common_pb2.CandidateList(item_ids=[1], channel_masks=[2, 4])
    with pytest.raises(ValueError, match="request.candidates.channel_masks"):
        from_proto(msg, field="request.candidates")
    msg = common_pb2.CandidateList(item_ids=[1, 2], channel_positions=[1])
    with pytest.raises(ValueError, match="candidates.channel_positions"):
        from_proto(msg)
    with pytest.raises(ValueError, match="scores"):
        to_proto(np.arange(3), scores=np.zeros(2))


def test_to_proto_fills_a_parent_message_in_place():
    response = rank_pb2.RankResponse()
    response.candidates.item_ids.append(99)  # stale content is replaced
    to_proto(np.array([4, 2]), np.array([0.9, 0.1]), out=response.candidates)
    assert list(response.candidates.item_ids) == [4, 2]
    assert response.candidates.scores[0] == pytest.approx(0.9)
    assert len(response.candidates.channel_masks) == 0


def test_to_proto_rejects_non_integer_ids():
    with pytest.raises(TypeError, match="item_ids"):
        to_proto(np.array([1.5, 2.0]))


def test_take_reorders_all_arrays_together():
    cands = Candidates(
        np.array([10, 20, 30]),
        np.array([0.1, 0.3, 0.2], np.float32),
        np.array([2, 4, 8], np.uint32),
        np.array([5, 1, 3], np.uint32),
    )
    top = cands.take(np.argsort(-cands.scores)[:2])
    np.testing.assert_array_equal(top.item_ids, [20, 30])
    np.testing.assert_array_equal(top.channel_masks, [4, 8])
    np.testing.assert_array_equal(top.channel_positions, [1, 3])


def test_channel_masks():
    assert channel_bit(common_pb2.CHANNEL_TWO_TOWER) == 2
    assert channel_bit("CHANNEL_FRESH") == channel_bit("fresh") == 1 << 5
    with pytest.raises(ValueError):
        channel_bit(common_pb2.CHANNEL_UNSPECIFIED)
    with pytest.raises(ValueError):
        channel_bit("nope")
    mask = channel_bit("popular") | channel_bit("item_cf")
    assert channels_of(mask) == ["item_cf", "popular"]
    assert channels_of(np.uint32(0)) == []
    masks = np.array([mask, channel_bit("popular"), 0], dtype=np.uint32)
    counts = channel_counts(masks)
    assert counts["popular"] == 2 and counts["item_cf"] == 1 and counts["social"] == 0
    assert set(counts) == {"two_tower", "item_cf", "profile", "social", "fresh", "popular", "mf"}
