"""docker-compose.yml and its replica override, checked offline against the code they run: the
local stack's ports and modules, loopback only, a grpc.health.v1 probe per service, Prometheus
scraping every metrics port. The end-to-end run is deploy/compose_smoke.sh (needs Docker)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from app.stages import SERVER_MODULES as MODULES
from cascade.telemetry import RpcMetrics, new_registry
from cascade.topology import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, SERVICES, STAGES
from deploy.compose_check import scrape_targets, served_calls
from deploy.compose_replicas import (
    parse_counts,
    prometheus_config,
    replica_services,
    write_override,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus-compose.yml").read_text())


def env(service: dict, stage: str, name: str) -> str:
    return service["environment"][f"CASCADE_{stage.upper()}_{name}"]


def test_every_container_is_on_the_host_network_and_publishes_nothing():
    for name, service in COMPOSE["services"].items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service and "networks" not in service, name
        # The services bind ServerSettings.host, 127.0.0.1 by default: nothing may widen it.
        assert not any(key.endswith("_SERVER_HOST") for key in service.get("environment", {}))
    assert "--web.listen-address=127.0.0.1:9090" in COMPOSE["services"]["prometheus"]["command"]
    assert COMPOSE["services"]["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def test_the_five_services_run_one_image_with_the_local_stacks_ports_and_modules():
    images = {COMPOSE["services"][name]["image"] for name in SERVICES}
    assert images == {"${CASCADE_IMAGE:-cascade:latest}"}
    for name in SERVICES:
        service = COMPOSE["services"][name]
        assert service["command"] == ["python", "-m", MODULES[name]]
        assert env(service, name, "SERVER_PORT") == str(DEFAULT_PORTS[name])
        assert env(service, name, "SERVER_METRICS_PORT") == str(DEFAULT_METRICS_PORTS[name])
        assert env(service, name, "ARTIFACTS") == "/var/lib/cascade/artifacts"
        assert env(service, name, "DATA_DIR") == "/var/lib/cascade/data"
        mounts = {m.rsplit(":", 2)[1]: m for m in service["volumes"]}
        assert mounts["/var/lib/cascade/artifacts"].endswith(":ro")
        assert mounts["/var/lib/cascade/data"].endswith(":ro")


def test_health_checks_probe_each_services_own_port_through_grpc_health():
    for name in SERVICES:
        check = COMPOSE["services"][name]["healthcheck"]
        port = DEFAULT_PORTS[name]
        assert check["test"] == ["CMD", "python", "-m", "cascade.healthcheck", f"127.0.0.1:{port}"]
    gateway = COMPOSE["services"]["gateway"]
    assert set(gateway["depends_on"]) == {*STAGES, "redis"}
    for stage in STAGES:
        assert (
            env(gateway, "gateway", f"{stage.upper()}_TARGET")
            == f"127.0.0.1:{DEFAULT_PORTS[stage]}"
        )


def test_grafana_is_an_optional_profile_with_the_provisioning_mounted():
    grafana = COMPOSE["services"]["grafana"]
    assert grafana["profiles"] == ["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert all("profiles" not in COMPOSE["services"][name] for name in (*SERVICES, "prometheus"))


def test_prometheus_scrapes_every_metrics_port_of_the_stack():
    targets = scrape_targets(PROMETHEUS)
    for name in SERVICES:
        assert targets[name] == [f"127.0.0.1:{DEFAULT_METRICS_PORTS[name]}"]


def test_replica_counts_are_parsed_and_bounded():
    assert parse_counts(["rank=2", "recall=3"]) == {"rank": 2, "recall": 3}
    for bad in ("ranker=2", "rank=0", "rank=10", "rank=two", "rank"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_counts([bad])


def test_extra_replicas_get_their_own_ports_and_the_gateway_balances_over_them():
    services = replica_services(COMPOSE, {"rank": 3, "gateway": 2})
    assert set(services) == {"rank-2", "rank-3", "gateway", "gateway-2"}
    rank3 = services["rank-3"]
    assert env(rank3, "rank", "SERVER_PORT") == "50073"
    assert env(rank3, "rank", "SERVER_METRICS_PORT") == "9173"
    assert rank3["healthcheck"]["test"][-1] == "127.0.0.1:50073"
    assert "build" not in rank3 and rank3["network_mode"] == "host"
    assert env(services["gateway-2"], "gateway", "SERVER_PORT") == "50060"
    for gateway in (services["gateway"], services["gateway-2"]):
        rank_target = "ipv4:127.0.0.1:50053,127.0.0.1:50063,127.0.0.1:50073"
        assert env(gateway, "gateway", "RANK_TARGET") == rank_target
        assert {"rank-2", "rank-3"} <= set(gateway["depends_on"])
    # The base file is not modified, and one replica means no override at all.
    assert env(COMPOSE["services"]["rank"], "rank", "SERVER_PORT") == "50053"
    assert replica_services(COMPOSE, {"rank": 1}) == {}


def test_prometheus_config_gains_the_replica_targets_with_the_stage_label():
    config = prometheus_config(PROMETHEUS, COMPOSE, {"rank": 2, "recall": 3})
    targets = scrape_targets(config)
    assert targets["rank"] == ["127.0.0.1:9153", "127.0.0.1:9163"]
    assert targets["recall"] == ["127.0.0.1:9151", "127.0.0.1:9161", "127.0.0.1:9171"]
    assert targets["gateway"] == ["127.0.0.1:9150"]
    assert all(path.startswith("/etc/prometheus/") for path in config["rule_files"])
    assert scrape_targets(PROMETHEUS)["rank"] == ["127.0.0.1:9153"]  # the input is untouched


def test_override_files_are_written_with_mounts_relative_to_the_compose_file(tmp_path):
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text((ROOT / "docker-compose.yml").read_text())
    prometheus_file = tmp_path / "prometheus-compose.yml"
    prometheus_file.write_text(yaml.safe_dump(PROMETHEUS))
    override = write_override({"rank": 2}, tmp_path / "out", compose_file, prometheus_file)
    services = yaml.safe_load(override.read_text())["services"]
    assert set(services) == {"rank-2", "gateway", "prometheus"}
    prometheus = services["prometheus"]
    assert prometheus["volumes"] == ["./out/prometheus:/etc/prometheus-replicas:ro"]
    assert (
        prometheus["command"][0] == "--config.file=/etc/prometheus-replicas/prometheus-compose.yml"
    )
    assert prometheus["command"][1:] == COMPOSE["services"]["prometheus"]["command"][1:]
    generated = yaml.safe_load((tmp_path / "out/prometheus/prometheus-compose.yml").read_text())
    assert scrape_targets(generated)["rank"] == ["127.0.0.1:9153", "127.0.0.1:9163"]


def test_a_config_without_the_stage_target_is_refused():
    config = {"scrape_configs": [{"job_name": "other", "static_configs": [{"targets": ["x:1"]}]}]}
    with pytest.raises(ValueError, match="127.0.0.1:9153 for rank"):
        prometheus_config(config, COMPOSE, {"rank": 2})


def test_served_calls_counts_a_services_rpcs_but_not_health_checks():
    registry = new_registry()
    metrics = RpcMetrics("rank", registry)

    class Context:
        def code(self):
            return None

        def invocation_metadata(self):
            return ()

    for rpc, calls in (("cascade.v1.Rank/Rank", 3), ("grpc.health.v1.Health/Check", 5)):
        handle = metrics.timed(lambda request, context: None, rpc)
        for _ in range(calls):
            handle(None, Context())
    assert served_calls(generate_latest(registry).decode()) == 3


def test_every_service_shares_the_redis_store_which_keeps_an_fsynced_aof():
    redis = COMPOSE["services"]["redis"]
    command = redis["command"]
    flags = dict(zip(command[::2], command[1::2], strict=True))
    assert flags["--bind"] == "127.0.0.1" and flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "always" and flags["--dir"] == "/data"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in COMPOSE["volumes"]
    url = f"redis://127.0.0.1:{flags['--port']}/0"
    for name in SERVICES:
        assert env(COMPOSE["services"][name], name, "STORE") == f"${{CASCADE_STORE:-{url}}}"
        assert COMPOSE["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_gateway_refuses_to_start_without_a_token_unless_auth_off_is_said():
    """Compose passes an unset token as an empty string: the gateway's settings must refuse it
    while CASCADE_GATEWAY_REQUIRE_API_TOKEN keeps its compose default, and accept it when the
    operator turns authentication off explicitly."""
    from cascade.config import SettingsError, load_settings
    from gateway.server import GatewaySettings

    environment = COMPOSE["services"]["gateway"]["environment"]

    def settings(shell: dict[str, str]) -> GatewaySettings:
        resolved = {}
        for name, value in environment.items():  # compose's ${VAR:-default} interpolation
            match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
            resolved[name] = shell.get(match[1]) or match[2] if match else str(value)
        return load_settings(GatewaySettings, env_prefix="CASCADE_GATEWAY_", environ=resolved)

    with pytest.raises(SettingsError, match="no API token"):
        settings({})
    assert settings({"CASCADE_GATEWAY_API_TOKEN": "t0ken"}).api_token.reveal() == "t0ken"
    assert not settings({"CASCADE_GATEWAY_REQUIRE_API_TOKEN": "false"}).api_token
