"""Exploration slots: placement (seeded, no duplicates, the count kept), the arm settings'
checks, and through a real stack an upload that reaches a page by its explore slot, marked in the
answer, the impression record and the metrics, while an arm without the setting is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.candidates import Candidates
from gateway.arms import assign, parse_arms
from gateway.client import CascadeClient
from gateway.explore import LAST_SLOTS, ExploredMemory, explores, place, recent_uploads

pytestmark = pytest.mark.timeout(120)
DAY = 86_400


def candidates(ids, scores=None) -> Candidates:
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.arange(len(ids), 0, -1, dtype=np.float32) if scores is None else scores
    return Candidates(ids, np.asarray(scores, np.float32), np.ones(len(ids), np.uint32))


def test_the_explore_draw_is_a_fixed_function_of_the_request_id():
    ids = [f"request-{n}" for n in range(4000)]
    first = [explores(i, 0.1) for i in ids]
    assert first == [explores(i, 0.1) for i in ids]  # a replay decides the same
    assert 0.08 < np.mean(first) < 0.12  # about the rate (binomial sd 0.005)
    assert all(explores(i, 1.0) for i in ids[:50])
    assert np.mean([explores(i, 0.5) for i in ids]) == pytest.approx(0.5, abs=0.03)


def test_explored_items_take_the_last_slots_and_the_page_keeps_its_count():
    page = candidates([11, 12, 13, 14, 15])
    picks = candidates([90, 91])
    merged, explored = place(page, picks, LAST_SLOTS, count=5)
    assert merged.item_ids.tolist() == [11, 12, 13, 90, 91] and explored == [3, 4]
    merged, explored = place(page, picks.take(slice(0, 1)), 1, count=5)
    assert merged.item_ids.tolist() == [11, 90, 12, 13, 14] and explored == [1]
    assert merged.scores.tolist() == [5, 2, 4, 3, 2]  # each item keeps its own score
    # A position past the page's end: the slots are its last; a short page: right after it.
    assert place(page, picks, 9, count=5)[1] == [3, 4]
    short, explored = place(candidates([11, 12]), picks, LAST_SLOTS, count=5)
    assert short.item_ids.tolist() == [11, 12, 90, 91] and explored == [2, 3]
    # More picks than the page holds: never beyond count; no picks: the page unchanged.
    assert len(place(page, candidates(range(90, 100)), 0, count=3)[0].item_ids) == 3
    unchanged, none = place(page, candidates([]), LAST_SLOTS, count=5)
    assert unchanged.item_ids.tolist() == page.item_ids.tolist() and none == []


def test_recent_uploads_are_young_unexcluded_and_best_first_without_duplicates():
    uploaded = np.zeros(30, dtype=np.int64)
    now = 10 * DAY
    uploaded[[20, 21, 22, 23, 24]] = [now - 100, now - 2 * DAY, now - 5, now + 50, now - 10]
    uploaded[5] = 1  # a dataset item uploaded long ago
    recall = candidates([5, 20, 21, 22, 24, 20, 29, 23])
    positions = recent_uploads(recall, None, uploaded, now, DAY, np.array([], np.int64))
    # 21 is too old, 23 uploaded after the request, 29 unknown, 20's second copy dropped.
    assert recall.item_ids[positions].tolist() == [20, 22, 24]
    kept = np.array([1, 24, 2, 22])  # pre-rank kept 24 before 22 (20 not kept: after them)
    positions = recent_uploads(recall, kept, uploaded, now, DAY, np.array([22], np.int64))
    assert recall.item_ids[positions].tolist() == [24, 20]


def test_explored_memory_forgets_after_the_ttl_and_bounds_its_users():
    memory = ExploredMemory(max_users=2, per_user=2)
    memory.record(1, [20, 21], at_ms=1000, ttl_ms=500)
    memory.record(1, [22], at_ms=1200, ttl_ms=500)
    assert memory.recent(1, 1300).tolist() == [21, 22]  # per_user: the newest two
    assert memory.recent(1, 1600).tolist() == [22]
    memory.record(2, [30], 0, 10_000)
    memory.record(3, [31], 0, 10_000)  # a third user: the least recent (1) is forgotten
    assert memory.recent(1, 1300).tolist() == [] and memory.recent(3, 1).tolist() == [31]
    memory.record(0, [40], 0, 10_000)  # anonymous users are not remembered
    assert memory.recent(0, 1).tolist() == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ('{"explore_slots": -1}', "explore_slots must be an integer >= 0, got -1"),
        ('{"explore_slots": 1.5}', "explore_slots must be an integer >= 0"),
        ('{"explore_slots": true}', "explore_slots must be an integer >= 0"),
        ('{"explore_slots": 1, "explore_max_age_s": 0}', "explore_max_age_s must be an integer"),
        ('{"explore_slots": 1, "explore_rate": 0}', "explore_rate must be a number in \\(0, 1\\]"),
        ('{"explore_slots": 1, "explore_rate": 1.5}', "explore_rate must be a number in"),
        ('{"explore_slots": 1, "explore_position": -1}', "explore_position must be an integer"),
        ('{"explore_rate": 0.5}', "explore_rate without explore_slots >= 1 explores nothing"),
        ('{"explore_slots": 0, "explore_max_age_s": 60}', "explore_max_age_s without"),
    ],
)
def test_explore_settings_are_checked_naming_the_arm_and_key(overrides, message):
    from gateway.server import GatewaySettings

    with pytest.raises(ValueError, match=f"'b': {message}"):
        GatewaySettings(arms=f'[{{"name": "a"}}, {{"name": "b", "overrides": {overrides}}}]')
    (arm,) = parse_arms(
        '[{"name": "e", "overrides": {"explore_slots": 2, "explore_max_age_s": 3600, '
        '"explore_rate": 1, "explore_position": 3}}]'
    )
    assert arm.overrides == {
        "explore_slots": 2,
        "explore_max_age_s": 3600,
        "explore_rate": 1.0,
        "explore_position": 3,
    }


# Well after the tiny world's log: only what is uploaded here is in recall's fresh window.
UPLOAD_MS = 1_200_000_000_000
NEW = {"item_key": "new-song", "creator_id": 2, "categories": [1, 3], "upload_time_ms": UPLOAD_MS}
ARMS = '[{"name": "control"}, {"name": "explore", "overrides": {"explore_slots": 1}}]'
SALT = "exp-explore"


def pages(stack, users, at_ms: int, **kwargs):
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        return {u: client.recommend(u, count=5, request_time_ms=at_ms, **kwargs) for u in users}


def test_an_upload_reaches_a_page_by_the_explore_slot_and_control_is_unchanged(stack_factory):
    stack = stack_factory(clock="caller", arms=ARMS, arm_salt=SALT)
    plain = stack_factory(clock="caller")  # the same stack without arms: the "before"
    arm_of = {u: assign(SALT, str(u), parse_arms(ARMS)).name for u in range(1, 21)}
    explorers = [u for u, arm in arm_of.items() if arm == "explore"]
    controls = [u for u, arm in arm_of.items() if arm == "control"]
    assert explorers and controls
    for each in (stack, plain):
        with CascadeClient(each.gateway.address, timeout_s=10.0) as client:
            (new_id,) = client.add_items([NEW]).item_ids
    at = UPLOAD_MS + 60_000  # a minute after the upload
    answers = pages(stack, explorers + controls, at, debug=True)
    for user in explorers:
        answer = answers[user]
        ids = list(answer.items.item_ids)
        assert list(answer.explored_positions) == [4] and ids[4] == new_id  # the last slot
        assert len(ids) == 5 and len(set(ids)) == 5  # the page's count, no duplicate
        assert answer.item_keys[4] == "new-song"
        explore = next(t for t in answer.trace if t.stage == "explore")
        assert (explore.candidates_in, explore.candidates_out) == (1, 1)
    # An arm without the setting answers exactly what the gateway without arms answers.
    before = pages(plain, controls, at, debug=True)
    for user in controls:
        answer = answers[user]
        assert not answer.explored_positions and "explore" not in [t.stage for t in answer.trace]
        assert list(answer.items.item_ids) == list(before[user].items.item_ids)
    registry = stack.gateway.registry
    explored = registry.get_sample_value
    assert explored("cascade_gateway_explored_slots_total", {"arm": "explore"}) == len(explorers)
    assert explored("cascade_gateway_explored_slots_total", {"arm": "control"}) == 0
    # Explored to a user once: the next page (a second later) gives the slot to no upload.
    again = pages(stack, explorers[:1], at + 1000)[explorers[0]]
    assert not again.explored_positions and new_id not in again.items.item_ids
    assert explored("cascade_gateway_explore_empty_total", {"arm": "explore"}) == 1
    # Too old a day later; consumed never explored (a fresh user of the arm who played it).
    late = pages(stack, explorers[1:2], UPLOAD_MS + 2 * DAY * 1000)
    assert all(not a.explored_positions for a in late.values())
    stack.gateway.service.impressions.close()  # writes what is queued
    logged = {r["request_id"]: r for r in stack.gateway.service.log.read_impressions().to_pylist()}
    for user in explorers:
        row = logged[answers[user].request_id]
        assert row["explored"] == [False] * 4 + [True] and row["item_ids"][4] == new_id
        assert np.isnan(row["rank_scores"][4]) and not np.isnan(row["recall_scores"][4])
    for user in controls:
        assert logged[answers[user].request_id]["explored"] == [False] * 5


def test_a_played_upload_is_not_explored_to_that_user(stack_factory):
    stack = stack_factory(clock="caller", arms=ARMS, arm_salt=SALT)
    arm_of = {u: assign(SALT, str(u), parse_arms(ARMS)).name for u in range(1, 21)}
    user = next(u for u, arm in arm_of.items() if arm == "explore")
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        (new_id,) = client.add_items([NEW]).item_ids
        assert client.feedback([(user, new_id, "play")], request_time_ms=UPLOAD_MS + 1000).accepted
    answer = pages(stack, [user], UPLOAD_MS + 60_000)[user]
    assert not answer.explored_positions and new_id not in answer.items.item_ids
