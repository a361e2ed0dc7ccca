"""Arm assignment: stable, salted, and uniform in proportion to the shares."""

import numpy as np
import pytest

from gateway.arms import Arm, assign, bucket

ARMS = [Arm("cascade", 2.0), Arm("ease"), Arm("random")]


def test_a_user_keeps_their_arm_and_a_new_salt_reshuffles():
    first = [assign("s1", str(u), ARMS).name for u in range(2000)]
    again = [assign("s1", str(u), ARMS).name for u in range(2000)]
    other = [assign("s2", str(u), ARMS).name for u in range(2000)]
    assert first == again
    moved = np.mean([a != b for a, b in zip(first, other, strict=True)])
    assert 0.45 < moved < 0.75  # independent draws move 1 - (.5² + .25² + .25²) = 62.5%


def test_assignment_follows_the_shares_by_chi_square():
    n = 20_000
    names = [assign("exp-1", f"user-{u}", ARMS).name for u in range(n)]
    observed = np.array([names.count(arm.name) for arm in ARMS])
    expected = np.array([0.5, 0.25, 0.25]) * n
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 13.8  # p = 0.001 with 2 degrees of freedom


def test_bucket_is_a_fixed_function_of_salt_and_key():
    # Pinned values: a change to the hashing would silently move every user to another arm.
    assert bucket("salt", "42") == pytest.approx(0.30717663099005554, abs=1e-15)
    assert bucket("salt", "43") == pytest.approx(0.9373336205960858, abs=1e-15)
    assert 0 <= bucket("", "") < 1


def test_bad_arms_are_refused():
    with pytest.raises(ValueError, match="share must be > 0"):
        Arm("a", 0)
    with pytest.raises(ValueError, match="letters, digits"):
        Arm("a b")
    with pytest.raises(ValueError, match="unique"):
        assign("s", "1", [Arm("a"), Arm("a")])
    with pytest.raises(ValueError, match="no arms"):
        assign("s", "1", [])
