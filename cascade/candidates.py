"""Candidate lists between numpy and the wire (cascade.v1.CandidateList), plus channel masks.

Stages work on parallel numpy arrays; the wire carries packed repeated fields. Both directions are
vectorised: read with `np.asarray(field)` (a few microseconds per 2,000 candidates); a long list
is written as its packed wire bytes built in numpy and parsed once by protobuf's C code, a short
one from `array.tolist()` (a Python object per number: the cheaper way below a few hundred).
`python -m bench.wire` measures a hop; `make bench-overload` the stages' CPU per request.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cascade.v1 import common_pb2

# Short channel names ("two_tower", "item_cf", ...) by enum value, from the wire contract.
CHANNELS: dict[int, str] = {
    value.number: value.name.removeprefix("CHANNEL_").lower()
    for value in common_pb2.Channel.DESCRIPTOR.values
    if value.number != common_pb2.CHANNEL_UNSPECIFIED
}
_CHANNEL_VALUES = {name: number for number, name in CHANNELS.items()}
_CHANNEL_BITS = np.array(sorted(CHANNELS), dtype=np.uint32)  # (n_channels,)
# From this many candidates on, to_proto builds the wire bytes in numpy: its fixed cost (tens of
# microseconds) is repaid only on long lists (recall's 2,000: `python -m bench.request_path`).
PACKED_MIN = 1000
_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)  # 2^7 .. 2^63
_VARINT_SHIFTS = (7 * np.arange(10, dtype=np.uint64))[:, None]  # (10, 1)
_GROUPS = np.arange(10)[:, None]  # (10, 1)


class InvalidField(ValueError):
    """A request field that fails validation; `field` is its path, e.g. "candidates.scores"."""

    def __init__(self, field: str, description: str):
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class Candidates(NamedTuple):
    """A candidate list as parallel arrays of equal length n (unpacks as ids, scores, masks,
    positions: `to_proto(*candidates)` writes them all)."""

    item_ids: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float32
    channel_masks: np.ndarray  # (n,) uint32, bit c set when Channel c found the item
    # (n,) uint32, the item's best 1-based position in a finding channel's answer, 0 = unknown
    channel_positions: np.ndarray

    def take(self, order: np.ndarray | slice) -> Candidates:
        """The candidates at positions `order` (an index array, boolean mask or slice), in that
        order."""
        return Candidates(*(values[order] for values in self))


def to_proto(
    item_ids: np.ndarray,
    scores: np.ndarray | None = None,
    channel_masks: np.ndarray | None = None,
    channel_positions: np.ndarray | None = None,
    out: common_pb2.CandidateList | None = None,
) -> common_pb2.CandidateList:
    """A CandidateList holding the arrays; `out` (e.g. `response.candidates`) is filled in place,
    which saves copying the list into its parent message."""
    item_ids = np.asarray(item_ids)
    if item_ids.ndim != 1 or not (item_ids.dtype.kind in "iu" or item_ids.size == 0):
        raise TypeError(
            f"item_ids must be a 1-D integer array, got {item_ids.dtype}{item_ids.shape}"
        )
    n = len(item_ids)
    msg = common_pb2.CandidateList() if out is None else out
    if out is not None:
        out.Clear()
    if n >= PACKED_MIN:
        if scores is not None:
            scores = _same_length(scores, n, "scores", np.float32)
        if channel_masks is not None:
            channel_masks = _same_length(channel_masks, n, "channel_masks", np.uint32)
        if channel_positions is not None:
            channel_positions = _same_length(channel_positions, n, "channel_positions", np.uint32)
        msg.MergeFromString(packed_bytes(item_ids, scores, channel_masks, channel_positions))
        return msg
    msg.item_ids.extend(item_ids.tolist())
    if scores is not None:
        msg.scores.extend(_same_length(scores, n, "scores", np.float32).tolist())
    if channel_masks is not None:
        msg.channel_masks.extend(
            _same_length(channel_masks, n, "channel_masks", np.uint32).tolist()
        )
    if channel_positions is not None:
        positions = _same_length(channel_positions, n, "channel_positions", np.uint32)
        if positions.any():  # all 0 (unknown): left out, as packed_bytes does
            msg.channel_positions.extend(positions.tolist())
    return msg


def packed_bytes(
    item_ids: np.ndarray,
    scores: np.ndarray | None = None,
    channel_masks: np.ndarray | None = None,
    channel_positions: np.ndarray | None = None,
) -> bytes:
    """A CandidateList's wire bytes: fields 1, 3 and 4 as packed varints, 2 as packed
    little-endian float32 (what protobuf itself would write for the same arrays); positions that
    are all 0 (unknown) are left out."""
    parts = [_field(1, _varints(item_ids))]
    if scores is not None:
        parts.append(_field(2, scores.astype("<f4", copy=False).tobytes()))
    if channel_masks is not None:
        parts.append(_field(3, _varints(channel_masks)))
    if channel_positions is not None and np.asarray(channel_positions).any():
        parts.append(_field(4, _varints(channel_positions)))
    return b"".join(parts)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (an empty packed field is left out, as protobuf does)."""
    if not payload:
        return b""
    return bytes([number << 3 | 2]) + _varints(np.array([len(payload)])) + payload


def _varints(values: np.ndarray) -> bytes:
    """Base-128 varints of the values (int64 two's complement: a negative takes ten bytes)."""
    v = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    if not len(v):
        return b""
    last = np.searchsorted(_VARINT_LIMITS, v, side="right")  # (n,) index of each last byte
    width = int(last.max()) + 1
    # (width, n): the long axis innermost, so each step is one long vectorised loop.
    groups = (v >> _VARINT_SHIFTS[:width]).astype(np.uint8) & np.uint8(0x7F)
    more = _GROUPS[:width] < last  # a byte that another follows carries the top bit
    groups |= more.view(np.uint8) << np.uint8(7)
    kept = more | (_GROUPS[:width] == last)
    return np.ascontiguousarray(groups.T)[np.ascontiguousarray(kept.T)].tobytes()


def from_proto(msg: common_pb2.CandidateList, field: str = "candidates") -> Candidates:
    """The list's arrays; empty scores, masks or positions become zeros. Raises InvalidField,
    naming `field`.scores, `field`.channel_masks or `field`.channel_positions, when a non-empty
    array's length is not item_ids'."""
    item_ids = np.asarray(msg.item_ids, dtype=np.int64)
    n = len(item_ids)
    return Candidates(
        item_ids,
        _read(msg.scores, n, f"{field}.scores", np.float32),
        _read(msg.channel_masks, n, f"{field}.channel_masks", np.uint32),
        _read(msg.channel_positions, n, f"{field}.channel_positions", np.uint32),
    )


def check_positions(candidates: Candidates, field: str = "candidates") -> None:
    """Raises InvalidField naming `field`.channel_positions when an item has a position but no
    channel in its mask (a position is its place in a finding channel's answer)."""
    stray = np.flatnonzero((candidates.channel_positions > 0) & (candidates.channel_masks == 0))
    if len(stray):
        i = int(stray[0])
        raise InvalidField(
            f"{field}.channel_positions",
            f"item {int(candidates.item_ids[i])} (index {i}) has position "
            f"{int(candidates.channel_positions[i])} but no channel in channel_masks",
        )


def _same_length(values: np.ndarray, n: int, name: str, dtype: type) -> np.ndarray:
    values = np.asarray(values, dtype=dtype)
    if values.shape != (n,):
        raise ValueError(f"{name} has shape {values.shape}, item_ids has ({n},)")
    return values


def _read(repeated, n: int, field: str, dtype: type) -> np.ndarray:
    size = len(repeated)
    if size == 0:
        return np.zeros(n, dtype=dtype)
    if size != n:
        raise InvalidField(field, f"has {size} entries but item_ids has {n}; must be equal or 0")
    return np.asarray(repeated, dtype=dtype)


def channel_bit(channel: int | str) -> int:
    """The mask bit of a channel given by enum value (common_pb2.CHANNEL_FRESH), full enum name
    ("CHANNEL_FRESH") or short name ("fresh")."""
    if isinstance(channel, str):
        name = channel.removeprefix("CHANNEL_").lower()
        if name not in _CHANNEL_VALUES:
            raise ValueError(f"unknown channel {channel!r}; known: {sorted(_CHANNEL_VALUES)}")
        return 1 << _CHANNEL_VALUES[name]
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; known values: {sorted(CHANNELS)}")
    return 1 << int(channel)


def channels_of(mask: int) -> list[str]:
    """Short names of the channels set in one mask, in enum order."""
    return [name for number, name in CHANNELS.items() if int(mask) >> number & 1]


def channel_counts(channel_masks: np.ndarray) -> dict[str, int]:
    """Candidates found by each channel (a candidate counts for every channel that found it)."""
    masks = np.asarray(channel_masks, dtype=np.uint32)
    hits = (masks[:, None] >> _CHANNEL_BITS[None, :]) & 1  # (n, n_channels)
    counts = hits.sum(axis=0)
    return {CHANNELS[int(bit)]: int(c) for bit, c in zip(_CHANNEL_BITS, counts, strict=True)}
