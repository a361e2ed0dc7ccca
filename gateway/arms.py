"""Experiment arms: which pipeline configuration serves which user.

A user's arm is a pure function of (salt, user key): sha256 of "salt:key" read as a number in
[0, 1), matched against the arms' cumulative traffic shares. So a user keeps their arm across
requests, processes and replicas, a new salt reshuffles everyone, and changing one arm's share
only moves the users at the boundary. The arm's name travels in the impression record and labels
metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arm:
    """A named pipeline configuration and its share of users (shares are normalised)."""

    name: str
    share: float = 1.0
    # What the arm changes in the pipeline, e.g. {"rank_count": 50, "stages": "recall,rerank"}.
    overrides: dict[str, object] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"arm name {self.name!r}: letters, digits, '-' and '_' only")
        if not self.share > 0:
            raise ValueError(f"arm {self.name!r}: share must be > 0, got {self.share}")


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
