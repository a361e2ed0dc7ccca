"""The retrain driver waits on the services' own RPCs: each stage reports the version it answers
from, the gateway the version its catalogue is loaded from."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from cascade.artifacts import clone, publish
from gateway.server import start
from tests.gateway.conftest import (  # noqa: F401  (stack_factory: a fixture)
    QUIET,
    VERSION,
    Built,
    gateway_settings,
    stack_factory,
    start_rank,
)
from training.daily import serving_versions, wait_for_version


def test_each_service_reports_the_version_it_serves(stack_factory):  # noqa: F811
    stack = stack_factory()
    stages = {name: server.address for name, server in stack.stages.items()}
    stages["gateway"] = stack.gateway.address
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


def test_the_wait_holds_until_the_gateway_catalogue_is_reloaded_too(built, tmp_path):
    """Rank serves the new bundle while the gateway's catalogue is still the old one: the wait
    is not over (the next simulated day would meet the old catalogue) until the gateway reloads.
    Both reload when told (no polling), so each state is held as long as the test needs it."""
    root = tmp_path / "artifacts"
    shutil.copytree(built.artifacts, root, symlinks=True)  # publishing must not touch `built`
    own = Built(built.dataset, built.data_dir, root)
    manual = dataclasses.replace(QUIET, reload_interval_s=0.0)
    rank = start_rank(own, manual)
    gateway = start(gateway_settings(own, {"rank": rank}, server=manual))
    services = {"rank": rank.address, "gateway": gateway.address}
    try:
        assert serving_versions(services) == {"gateway": VERSION, "rank": VERSION}
        clone(root, VERSION, "v2")
        publish(root, "v2")
        assert rank.reloader is not None and rank.reloader.check()
        assert serving_versions(services) == {"gateway": VERSION, "rank": "v2"}
        with pytest.raises(RuntimeError, match="still not serving v2") as raised:
            wait_for_version(services, "v2", timeout_s=0.2)
        assert f"'gateway': '{VERSION}'" in str(raised.value)
        assert gateway.reloader is not None and gateway.reloader.check()
        wait_for_version(services, "v2", timeout_s=5.0)  # both on v2: returns at once
        assert gateway.service.catalog.version == "v2"
    finally:
        gateway.stop(0)
        gateway.service.close()
        rank.stop(0)
