"""Arm assignment: stable, salted, and uniform in proportion to the shares."""

import numpy as np
import pyarrow as pa
import pytest

from gateway.arms import Arm, assign, bucket, parse_arms
from gateway.client import CascadeClient

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


def test_arms_parse_from_the_setting_and_errors_name_the_problem():
    arms = parse_arms(
        '[{"name": "control"}, {"name": "small", "share": 0.5, "overrides": {"rank_count": 20}}]'
    )
    assert [(a.name, a.share, a.overrides) for a in arms] == [
        ("control", 1.0, {}),
        ("small", 0.5, {"rank_count": 20}),
    ]
    assert parse_arms("") == ()
    for text, message in (
        ("{", "not JSON"),
        ('{"name": "a"}', "a JSON list of objects"),
        ('[{"name": "a", "colour": 1}]', "unknown keys \\['colour'\\]"),
        ('[{"name": "a", "overrides": {"bundle": 1}}]', "unknown keys \\['bundle'\\]"),
        ('[{"name": "a", "overrides": {"rank_count": 0}}]', "rank_count must be an integer >= 1"),
        ('[{"name": "a"}, {"name": "a"}]', "names must be unique"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_arms(text)


def test_the_gateway_serves_each_user_the_funnel_of_their_arm(stack_factory):
    arms = '[{"name": "control"}, {"name": "short", "overrides": {"rank_count": 6}}]'
    stack = stack_factory(arms=arms, arm_salt="exp-7")
    expected = {u: assign("exp-7", str(u), parse_arms(arms)).name for u in range(1, 21)}
    assert set(expected.values()) == {"control", "short"}  # both arms have users here
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        answers = {u: client.recommend(u, count=5, debug=True) for u in expected}
    for user, answer in answers.items():
        assert answer.arm == expected[user]
        rank = next(t for t in answer.trace if t.stage == "rank")
        if not rank.degraded:  # the arm's cut, or the configured one (15 in the test stack)
            assert rank.candidates_out == (6 if answer.arm == "short" else 15)
    stack.gateway.service.impressions.close()  # writes what is queued
    logged = stack.gateway.service.log.read_impressions().to_pylist()
    assert {row["request_id"]: row["arm"] for row in logged} == {
        a.request_id: a.arm for a in answers.values()
    }


def test_a_bad_arms_setting_stops_the_gateway_before_it_serves():
    from gateway.server import GatewaySettings

    with pytest.raises(ValueError, match="arms: not JSON"):
        GatewaySettings(arms="[")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ('{"skip": ["recall"]}', "skip must be a list of stages among prerank, rank, rerank"),
        ('{"skip": "rank"}', "skip must be a list"),
        ('{"rerank_method": "fancy"}', "rerank_method must be one of none, mmr, dpp"),
        ('{"rerank_trade_off": 1.5}', "rerank_trade_off must be a number in \\[0, 1\\]"),
        ('{"rerank_trade_off": true}', "rerank_trade_off must be a number"),
    ],
)
def test_stage_and_rerank_overrides_are_checked_naming_the_arm(overrides, message):
    with pytest.raises(ValueError, match=f"'b': {message}"):
        parse_arms(f'[{{"name": "a"}}, {{"name": "b", "overrides": {overrides}}}]')
    arm = parse_arms(
        '[{"name": "a", "overrides": {"skip": ["rerank", "prerank"], '
        '"rerank_method": "dpp", "rerank_trade_off": 1}}]'
    )[0]
    assert arm.overrides == {
        "skip": ("prerank", "rerank"),
        "rerank_method": "dpp",
        "rerank_trade_off": 1.0,
    }


def test_an_arm_skips_stages_and_each_arm_is_a_metrics_label(stack_factory):
    arms = (
        '[{"name": "full"}, {"name": "lean", "overrides": {"skip": ["prerank", "rank"], '
        '"rerank_method": "none"}}]'
    )
    stack = stack_factory(arms=arms, arm_salt="exp-8")
    expected = {u: assign("exp-8", str(u), parse_arms(arms)).name for u in range(1, 21)}
    assert set(expected.values()) == {"full", "lean"}
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        answers = {u: client.recommend(u, count=5, debug=True) for u in expected}
    for user, answer in answers.items():
        trace = {t.stage: t for t in answer.trace}
        skipped = {s for s, t in trace.items() if t.degraded_reason == "SKIPPED"}
        assert skipped == ({"prerank", "rank"} if expected[user] == "lean" else set())
        assert not set(answer.degraded_stages) & skipped  # asked for, so not degraded
        if expected[user] == "lean":  # rank's list is recall's order cut to the rank count
            assert trace["rank"].candidates_out == 15 and not trace["rank"].model_version
    registry = stack.gateway.registry
    for name in ("full", "lean"):
        count = sum(arm == name for arm in expected.values())
        got = registry.get_sample_value("cascade_gateway_arm_answers_total", {"arm": name})
        assert got == count
        latency = {"arm": name}
        assert (
            registry.get_sample_value("cascade_gateway_arm_latency_seconds_count", latency) == count
        )
    assert registry.get_sample_value("cascade_gateway_arm_answers_total", {"arm": "none"}) is None
    stack.gateway.service.impressions.close()
    logged = stack.gateway.service.log.read_impressions().to_pylist()
    for row in logged:  # a skipped stage logs no scores
        assert (row["rank_scores"] == []) == (row["arm"] == "lean")


def test_without_arms_answers_count_under_the_none_label(stack_factory):
    stack = stack_factory()
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        client.recommend(2, count=5)
    labels = {"arm": "none"}
    assert stack.gateway.registry.get_sample_value("cascade_gateway_arm_answers_total", labels) == 1


def test_a_shadow_arm_ranks_other_arms_requests_logged_beside_them_never_shown(stack_factory):
    from training.fold import served_impressions

    arms = '[{"name": "full"}, {"name": "lean", "overrides": {"skip": ["prerank", "rank"]}}]'
    stack = stack_factory(arms=arms, arm_salt="exp-8", shadow_arm="lean")
    expected = {u: assign("exp-8", str(u), parse_arms(arms)).name for u in range(1, 13)}
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        answers = {u: client.recommend(u, count=5) for u in expected}
    service = stack.gateway.service
    service.close()  # finishes the shadows, then writes what is queued
    logged = service.log.read_impressions()
    rows = logged.to_pylist()
    shadows = {r["request_id"]: r for r in rows if r["arm"] == "shadow:lean"}
    served = {r["request_id"]: r for r in rows if not r["arm"].startswith("shadow:")}
    full = {a.request_id for u, a in answers.items() if expected[u] == "full"}
    assert set(shadows) == full and set(served) == {a.request_id for a in answers.values()}
    for request_id, shadow in shadows.items():  # the lean ranking of the same request
        assert shadow["rank_scores"] == [] and served[request_id]["rank_scores"] != []
        assert shadow["user_id"] == served[request_id]["user_id"]
    registry = stack.gateway.registry
    logged_count = registry.get_sample_value(
        "cascade_gateway_shadow_rankings_total", {"outcome": "logged"}
    )
    assert logged_count == len(full)
    no_events = pa.table({"request_id": [], "item_id": [], "event": []})
    assert len(served_impressions(no_events, logged)["item_id"]) == 5 * len(answers)


def test_a_shadow_arm_must_be_one_of_the_arms():
    from gateway.server import GatewaySettings

    with pytest.raises(ValueError, match="shadow_arm 'b' is not one of the arms"):
        GatewaySettings(arms='[{"name": "a"}]', shadow_arm="b")
