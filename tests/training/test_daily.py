"""The retrain driver waits on the stages' own RPCs: each reports the version it answers from."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import VERSION, stack_factory  # noqa: F401  (a fixture)
from training.daily import serving_versions, wait_for_version


def test_each_stage_reports_the_version_it_serves(stack_factory):  # noqa: F811
    stack = stack_factory()
    stages = {name: server.address for name, server in stack.stages.items()}
    assert serving_versions(stages) == dict.fromkeys(stages, VERSION)
    wait_for_version(stages, VERSION, timeout_s=5.0)  # already served: returns at once
    with pytest.raises(RuntimeError, match="still not serving v2 after 0.2 s") as raised:
        wait_for_version(stages, "v2", timeout_s=0.2)
    assert f"'rank': '{VERSION}'" in str(raised.value)


def test_a_stage_that_does_not_answer_is_named_by_its_code(stack_factory):  # noqa: F811
    stack = stack_factory()
    stages = {name: server.address for name, server in stack.stages.items()}
    stack.stop_stage("rank")
    versions = serving_versions(stages, timeout_s=1.0)
    assert versions["rank"] == "UNAVAILABLE"
    assert versions["recall"] == versions["rerank"] == VERSION
