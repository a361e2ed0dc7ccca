"""One funnel, two transports: the gateway's Cascade over gRPC to real stage servers and over
their servicer objects in process gives the same lists; `stop_after` cuts the funnel."""

from __future__ import annotations

import grpc
import pytest

from cascade.telemetry import new_registry
from cascade.topology import STAGES
from cascade.v1 import common_pb2
from gateway.catalog import load_catalog
from gateway.pipeline import Budget, Cascade, GatewayMetrics, Served
from gateway.transport import LocalContext, LocalError, local_pools, new_cascade, stage_pools
from services.rank.server import SERVER as RANK_SERVER
from services.rank.server import RankSettings

USERS = (1, 2, 5, 9, 17)


def _servicers(stack) -> dict[str, object | None]:
    """The running stages' servicer objects (rank's server is built bare: its own is made here,
    by its server module's `load` and `service`, from the same bundle)."""
    servicers = {name: server.service for name, server in stack.stages.items()}
    settings = RankSettings(artifacts=stack.settings.artifacts, data_dir=stack.settings.data_dir)
    servicers["rank"] = RANK_SERVER.service(settings, RANK_SERVER.load(settings), new_registry())
    return {stage: servicers.get(stage) for stage in STAGES}


def _cascades(stack) -> tuple[Cascade, Cascade]:
    settings = stack.settings
    catalog = load_catalog(settings)
    over_grpc = new_cascade(
        settings, catalog, stage_pools(settings, None), GatewayMetrics(new_registry())
    )
    in_process = new_cascade(
        settings, catalog, local_pools(_servicers(stack)), GatewayMetrics(new_registry())
    )
    return over_grpc, in_process


def _run(cascade: Cascade, stack, user_id: int, stop_after: str = STAGES[-1]):
    served = Served()
    budget = Budget(30.0, stack.settings.shares())  # no stage runs out of time on a busy machine
    # One request time for every run (the stages' "now" otherwise moves with their uptime).
    now_ms = 1000 * load_catalog(stack.settings).as_of_s
    user = common_pb2.UserContext(user_id=user_id, request_time_ms=now_ms)
    answer = cascade.run(user, 5, budget, debug=True, served=served, stop_after=stop_after)
    lists = {stage: list(candidates.item_ids) for stage, candidates in served.lists.items()}
    return answer, lists


def test_the_funnel_gives_the_same_lists_over_grpc_and_in_process(stack_factory):
    # Two fresh stacks: the stages remember what they showed (the already-shown filters), so
    # each transport asks each user for the first time.
    first, second = stack_factory(), stack_factory()
    over_grpc, _ = _cascades(first)
    _, in_process = _cascades(second)
    for user_id in USERS:
        remote, remote_lists = _run(over_grpc, first, user_id)
        local, local_lists = _run(in_process, second, user_id)
        assert not remote.degraded and not local.degraded
        assert [t.stage for t in local.trace] == list(STAGES)
        assert remote_lists == local_lists
        assert list(remote.items.item_ids) == list(local.items.item_ids)
        assert len(remote_lists["recall"]) > len(remote_lists["rank"]) > 0


def test_stop_after_ends_the_funnel_at_that_stage(stack_factory):
    stack = stack_factory()  # fresh: rerank's already-shown filter has seen nothing yet
    _, in_process = _cascades(stack)
    cuts = {stop: _run(in_process, stack, 2, stop_after=stop) for stop in STAGES}
    whole = cuts[STAGES[-1]][1]  # the last stage's run is the whole funnel
    for stop, (answer, lists) in cuts.items():
        called = list(STAGES[: STAGES.index(stop) + 1])
        assert [t.stage for t in answer.trace] == called
        assert list(lists) == called
        # A cut is the head of the same stage's list in the whole run (no stage sees later ones).
        assert list(answer.items.item_ids) == whole[stop][:5]
    with pytest.raises(ValueError, match="stop_after"):
        _run(in_process, stack, 2, stop_after="gateway")


def test_a_stage_without_a_servicer_falls_back_in_process(shared_stack):
    servicers = _servicers(shared_stack) | {"rank": None}
    cascade = new_cascade(
        shared_stack.settings,
        load_catalog(shared_stack.settings),
        local_pools(servicers),
        GatewayMetrics(new_registry()),
    )
    answer, lists = _run(cascade, shared_stack, 2, stop_after="rank")
    assert answer.degraded and list(answer.degraded_stages) == ["rank"]
    assert answer.trace[-1].degraded_reason == "CIRCUIT_OPEN"
    # Rank's fallback: the previous stage's order, cut to rank's count.
    before = lists["prerank"] if "prerank" in lists else lists["recall"]
    assert lists["rank"] == before[: shared_stack.settings.rank_count]


def test_an_in_process_abort_reaches_the_caller_as_a_grpc_error():
    context = LocalContext(timeout=0.5)
    assert 0 < context.time_remaining() <= 0.5
    with pytest.raises(grpc.RpcError) as raised:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "count: too large")
    assert isinstance(raised.value, LocalError)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "count: too large"
    assert LocalContext(None).time_remaining() is None  # no deadline, as in gRPC
