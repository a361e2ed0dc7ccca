"""Experiment arms: which pipeline configuration serves which user.

A user's arm is a pure function of (salt, user key): sha256 of "salt:key" read as a number in
[0, 1), matched against the arms' cumulative traffic shares. So a user keeps their arm across
requests, processes and replicas, a new salt reshuffles everyone, and changing one arm's share
only moves the users at the boundary. The arm's name travels in the impression record and labels
metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade.candidates import CHANNELS
from cascade.traffic_pool import PoolSettings


@dataclass(frozen=True)
class Arm:
    """A named pipeline configuration and its share of users (shares are normalised)."""

    name: str
    share: float = 1.0
    # What the arm changes in the pipeline, e.g. {"rank_count": 50, "stages": "recall,rerank"}.
    # Funnel fields -> values of each field's type (checked by parse_arms).
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        plain = self.name.replace("-", "").replace("_", "").replace("+", "")
        if not self.name or not plain.isalnum():
            raise ValueError(f"arm name {self.name!r}: letters, digits, '-', '_' and '+' only")
        if not self.share > 0:
            raise ValueError(f"arm {self.name!r}: share must be > 0, got {self.share}")


# What an arm may change: the funnel's cuts, stages skipped (their fallback answers: recall's
# order truncated for prerank, prerank's order for rank, the local creator cap and seen filter for
# rerank), the reranker's diversity method and trade-off, and recall's channel quotas (each
# stage keeps its own settings otherwise).
CUTS = ("recall_count", "prerank_count", "rank_count", "max_per_creator")
SKIPPABLE = ("prerank", "rank", "rerank")
RERANK_METHODS = ("none", "mmr", "dpp")
# The traffic pool (gateway/pool.py): "pool" is an object of PoolSettings fields that replace the
# gateway's own `pool` settings for the arm, e.g. {"pool": {"slots": 0}} (no pool) or
# {"pool": {"target": 50, "position": 2}}.
OVERRIDABLE = (*CUTS, "skip", "rerank_method", "rerank_trade_off", "channel_quotas", "pool")
CHANNEL_NAMES = tuple(CHANNELS.values())


def parse_arms(text: str) -> tuple[Arm, ...]:
    """Arms from the `arms` setting: a JSON list of {"name", "share", "overrides"}, e.g.
    [{"name": "control"}, {"name": "small", "share": 0.5, "overrides": {"rank_count": 20}},
     {"name": "no-prerank", "overrides": {"skip": ["prerank"], "rerank_trade_off": 0.9}},
     {"name": "fresh", "overrides": {"channel_quotas": {"fresh": 0.3, "popular": 0.0}}}].
    ValueError names what is wrong; "" means no arms."""
    if not text.strip():
        return ()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"arms: not JSON ({error})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("arms: expected a JSON list of objects")
    arms = []
    for entry in entries:
        unknown = set(entry) - {"name", "share", "overrides"}
        overrides = entry.get("overrides", {})
        bad = sorted(set(overrides) - set(OVERRIDABLE)) if isinstance(overrides, dict) else ["?"]
        if unknown or bad:
            raise ValueError(
                f"arms: unknown keys {sorted(unknown) + bad}; an arm has name, share and "
                f"overrides of {', '.join(OVERRIDABLE)}"
            )
        name = entry.get("name")
        overrides = {key: _checked(name, key, value) for key, value in overrides.items()}
        arms.append(Arm(str(entry.get("name", "")), float(entry.get("share", 1.0)), overrides))
    if len({arm.name for arm in arms}) != len(arms):
        raise ValueError(f"arms: names must be unique, got {[arm.name for arm in arms]}")
    return tuple(arms)


def funnel_of(funnel: Any, overrides: dict[str, Any]) -> Any:
    """`funnel` (gateway/pipeline.py Funnel) with an arm's overrides; its "pool" fields replace
    those of the funnel's own pool settings."""
    pool = overrides.get("pool")
    rest = {key: value for key, value in overrides.items() if key != "pool"}
    if pool is not None:
        rest["pool"] = dataclasses.replace(funnel.pool, **pool)
    return dataclasses.replace(funnel, **rest)


def _checked(arm: object, key: str, value: object) -> object:
    """One override's value as the funnel takes it; ValueError naming the arm and the key."""
    if key == "pool":
        return _pool_value(arm, value)
    if key in CUTS:
        least = 0 if key == "max_per_creator" else 1  # a cut of 0 would empty the funnel
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"arms: {arm!r}: {key} must be an integer >= {least}")
        return value
    if key == "skip":
        if not isinstance(value, list) or not set(value) <= set(SKIPPABLE):
            raise ValueError(
                f"arms: {arm!r}: skip must be a list of stages among {', '.join(SKIPPABLE)} "
                f"(recall cannot be skipped), got {value!r}"
            )
        return tuple(stage for stage in SKIPPABLE if stage in value)
    if key == "channel_quotas":  # {channel short name: share of recall's count in [0, 1]}
        if not isinstance(value, dict) or not value:
            raise ValueError(f"arms: {arm!r}: channel_quotas must be an object of channel: share")
        unknown = sorted(set(value) - set(CHANNEL_NAMES))
        if unknown:
            raise ValueError(
                f"arms: {arm!r}: channel_quotas: unknown channels {unknown}; "
                f"one of {', '.join(CHANNEL_NAMES)}"
            )
        for name, share in value.items():
            if (
                not isinstance(share, (int, float))
                or isinstance(share, bool)
                or not 0 <= share <= 1
            ):
                raise ValueError(
                    f"arms: {arm!r}: channel_quotas[{name}] must be a number in [0, 1], "
                    f"got {share!r}"
                )
        return tuple(sorted((name, float(share)) for name, share in value.items()))
    if key == "rerank_method":
        if value not in RERANK_METHODS:
            raise ValueError(
                f"arms: {arm!r}: rerank_method must be one of {', '.join(RERANK_METHODS)}"
            )
        return value
    # rerank_trade_off: 1 = relevance only, 0 = diversity only (the reranker's theta)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"arms: {arm!r}: rerank_trade_off must be a number in [0, 1]")
    return float(value)


def _pool_value(arm: object, value: object) -> dict[str, Any]:
    """A pool override: known PoolSettings fields with values it accepts (checked against the
    defaults; each field's rule stands alone)."""
    names = [f.name for f in dataclasses.fields(PoolSettings)]
    if not isinstance(value, dict) or not set(value) <= set(names):
        unknown = sorted(set(value) - set(names)) if isinstance(value, dict) else value
        raise ValueError(
            f"arms: {arm!r}: pool must be an object of {', '.join(names)}; got {unknown!r}"
        )
    try:
        PoolSettings(**value)
    except ValueError as error:
        raise ValueError(f"arms: {arm!r}: {error}") from None
    return dict(value)


def bucket(salt: str, user_key: str) -> float:
    """The user's stable position in [0, 1) for this salt."""
    digest = hashlib.sha256(f"{salt}:{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(salt: str, user_key: str, arms: Sequence[Arm]) -> Arm:
    """The arm that serves `user_key` (the last arm takes any rounding remainder)."""
    if not arms:
        raise ValueError("no arms configured")
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    total = sum(arm.share for arm in arms)
    point = bucket(salt, user_key) * total
    for arm in arms:
        point -= arm.share
        if point < 0:
            return arm
    return arms[-1]
