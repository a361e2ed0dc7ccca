"""Each profile has a Kubernetes overlay that serves it: generated, fresh, and every container
of its render resolves its settings from that profile."""

from __future__ import annotations

import shutil

import pytest

from cascade.profiles import load_profile, profile_names
from deploy import k8s_checks, profile_overlays
from deploy.k8s_validate import K8S_DIR, OVERLAYS_DIR, kustomizations, render


def test_the_overlays_and_the_base_profile_are_fresh():
    assert profile_overlays.stale() == [], "stale: run `make settings-reference`"
    assert [p.name for p in kustomizations() if p.name.startswith("profile-")] == [
        f"profile-{name}" for name in profile_names()
    ]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomization")
def test_an_overlay_serves_its_profile_in_every_container():
    lift = load_profile("simulated-lift")
    found, errors = k8s_checks.workloads(render(OVERLAYS_DIR / "profile-simulated-lift"))
    assert not errors and len(found) == 5
    for workload in found:
        assert not workload.errors, workload.errors
        assert (workload.profile.name, workload.profile.sha256) == ("simulated-lift", lift.sha256)
    by_stage = {w.stage.name: w.settings for w in found}
    assert by_stage["recall"].item_cf.quota == 1.0 and by_stage["recall"].mf.quota == 0.0
    assert by_stage["gateway"].recall_count == 200
    assert by_stage["rerank"].rerank.dpp_trade_off == 1.0
    base = {w.stage.name: w for w in k8s_checks.workloads(render(K8S_DIR))[0]}
    assert base["recall"].profile.name == "default" and base["recall"].settings.mf.quota == 0.3


def test_compose_serves_the_profile_its_variable_names():
    """Every service mounts deploy/profiles/${CASCADE_PROFILE:-default}.toml where its
    CASCADE_PROFILE_FILE points, so `CASCADE_PROFILE=NAME docker-compose up` serves NAME."""
    import re

    import yaml

    from cascade.topology import SERVICES

    compose = yaml.safe_load((profile_overlays.ROOT / "docker-compose.yml").read_text())
    for name in SERVICES:
        service = compose["services"][name]
        target = service["environment"]["CASCADE_PROFILE_FILE"]
        mounts = [v for v in service["volumes"] if v.endswith(f":{target}:ro")]
        assert len(mounts) == 1, (name, service["volumes"])
        source = mounts[0].removesuffix(f":{target}:ro")
        assert re.fullmatch(r"\./deploy/profiles/\$\{CASCADE_PROFILE:-default\}\.toml", source)
