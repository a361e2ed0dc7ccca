"""Per-arm channel quotas: an arm's `channel_quotas` travel in RecallRequest.channel_quotas and
change recall's channel mix for that arm's users only; recall refuses unknown channels and shares
outside [0, 1] naming the field; a bad arm setting stops the gateway naming the arm and key."""

from __future__ import annotations

import grpc
import pytest

from cascade.client import field_violations
from cascade.v1 import common_pb2, recall_pb2, recall_pb2_grpc
from gateway.arms import assign, parse_arms
from gateway.client import CascadeClient

pytestmark = pytest.mark.timeout(120)
# Every first-pass slot to popular: the other channels only fill what it leaves.
POPULAR_ONLY = dict.fromkeys(("mf", "two_tower", "item_cf", "profile", "social", "fresh"), 0.0)
POPULAR_ONLY["popular"] = 1.0


def test_an_arms_quotas_change_its_users_channel_mix(stack_factory):
    arms = (
        '[{"name": "control"}, {"name": "trending", "overrides": {"channel_quotas": '
        '{"popular": 1.0, "mf": 0, "two_tower": 0, "item_cf": 0, "profile": 0, "social": 0, '
        '"fresh": 0}}}]'
    )
    stack = stack_factory(arms=arms, arm_salt="exp-q")
    expected = {u: assign("exp-q", str(u), parse_arms(arms)).name for u in range(1, 21)}
    assert set(expected.values()) == {"control", "trending"}
    with CascadeClient(stack.gateway.address, timeout_s=10.0) as client:
        answers = {u: client.recommend(u, count=5, debug=True) for u in expected}
    popular_share = {"control": [], "trending": []}
    for user, answer in answers.items():
        recall = next(t for t in answer.trace if t.stage == "recall")
        assert not recall.degraded
        counts = dict(recall.channel_counts)
        popular_share[expected[user]].append(counts.get("popular", 0) / recall.candidates_out)
    # The trending arm's recall list is popular's (40 of 40 in the test stack); the control
    # arm's quota for popular is 5% of 40, plus what the other channels leave.
    assert min(popular_share["trending"]) == 1.0
    assert max(popular_share["control"]) < 0.5


@pytest.mark.parametrize(
    ("quotas", "field"),
    [
        ({"nearest": 0.5}, "channel_quotas"),
        ({"fresh": -0.1}, "channel_quotas[fresh]"),
        ({"popular": 1.5}, "channel_quotas[popular]"),
    ],
)
def test_recall_refuses_bad_quotas_naming_the_field(shared_stack, quotas, field):
    with grpc.insecure_channel(shared_stack.stages["recall"].address) as channel:
        request = recall_pb2.RecallRequest(
            user=common_pb2.UserContext(user_id=3), count=10, channel_quotas=quotas
        )
        with pytest.raises(grpc.RpcError) as error:
            recall_pb2_grpc.RecallStub(channel).Recall(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error.value)) == [field]


def test_a_request_quota_changes_the_mix_for_that_request_only(shared_stack):
    with grpc.insecure_channel(shared_stack.stages["recall"].address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        user = common_pb2.UserContext(user_id=3)
        shaped = stub.Recall(
            recall_pb2.RecallRequest(user=user, count=20, channel_quotas=POPULAR_ONLY), timeout=5
        )
        plain = stub.Recall(recall_pb2.RecallRequest(user=user, count=20), timeout=5)
    kept = lambda answer: {r.channel: r.kept for r in answer.channels}  # noqa: E731
    assert kept(shaped)[common_pb2.CHANNEL_POPULAR] == 20
    assert kept(plain)[common_pb2.CHANNEL_POPULAR] < 20


@pytest.mark.parametrize(
    ("quotas", "message"),
    [
        ('{"nearest": 0.5}', "'b': channel_quotas: unknown channels \\['nearest'\\]"),
        ('{"fresh": -1}', "'b': channel_quotas\\[fresh\\] must be a number in \\[0, 1\\]"),
        ('{"fresh": true}', "'b': channel_quotas\\[fresh\\] must be a number"),
        ("[0.5]", "'b': channel_quotas must be an object"),
    ],
)
def test_a_bad_quota_stops_the_gateway_naming_the_arm_and_key(quotas, message):
    from gateway.server import GatewaySettings

    arms = f'[{{"name": "a"}}, {{"name": "b", "overrides": {{"channel_quotas": {quotas}}}}}]'
    with pytest.raises(ValueError, match=message):
        GatewaySettings(arms=arms)
    good = parse_arms('[{"name": "a", "overrides": {"channel_quotas": {"fresh": 0.5}}}]')[0]
    assert good.overrides == {"channel_quotas": (("fresh", 0.5),)}
