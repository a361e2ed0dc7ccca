"""Replicas per stage for docker-compose.yml: writes an override file with one service per extra
replica, the gateway's round-robin target lists, and a Prometheus config that scrapes them all.

With host networking two containers cannot share a port, so compose's `--scale` and
`deploy.replicas` do not apply: replica k of a stage (k = 2..9) is the service `<stage>-<k>` on the
stage's ports + 10 (k - 1), e.g. rank-2 on 50063 (metrics 9163). The gateway's
CASCADE_GATEWAY_<STAGE>_TARGET becomes `ipv4:127.0.0.1:50053,127.0.0.1:50063`, which
cascade.client balances round robin. Prometheus gets a copy of deploy/prometheus/
prometheus-compose.yml with the replicas added to the stage's scrape targets (same labels).

    python -m deploy.compose_replicas rank=2 recall=3 [--out .cascade/compose]
    docker-compose -p cascade -f docker-compose.yml -f .cascade/compose/replicas.yml up -d
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from cascade.topology import SERVICES

REPO = Path(__file__).resolve().parents[1]
STAGES = SERVICES  # every service may get replicas
PORT_STEP = 10  # replica k listens on the stage's ports + PORT_STEP * (k - 1)
MAX_REPLICAS = 9  # 50050 + 10 * 8 + 4 stays clear of the next stage's first replica ports
PROMETHEUS_DIR = "/etc/prometheus"  # where compose mounts deploy/prometheus/
GENERATED_DIR = "/etc/prometheus-replicas"  # where the override mounts the generated config


def parse_counts(specs: Sequence[str]) -> dict[str, int]:
    """`["rank=2", "recall=3"]` -> {"rank": 2, "recall": 3}; ValueError naming the bad one."""
    counts: dict[str, int] = {}
    for spec in specs:
        stage, _, count = spec.partition("=")
        if stage not in STAGES:
            raise ValueError(f"{spec!r}: stage must be one of {', '.join(STAGES)}")
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise ValueError(f"{spec!r}: replicas must be an integer in [1, {MAX_REPLICAS}]")
        counts[stage] = int(count)
    return counts


def replica_ports(port: int, count: int) -> list[int]:
    return [port + PORT_STEP * k for k in range(count)]


def _env_int(service: Mapping, name: str) -> int:
    return int(service["environment"][name])


def replica_services(compose: Mapping, counts: Mapping[str, int]) -> dict[str, dict]:
    """The services of the override: the extra replicas, and the gateway's new targets."""
    services: dict[str, dict] = {}
    for stage, count in counts.items():
        base = compose["services"][stage]
        prefix = f"CASCADE_{stage.upper()}_SERVER_"
        ports = replica_ports(_env_int(base, prefix + "PORT"), count)
        metrics = replica_ports(_env_int(base, prefix + "METRICS_PORT"), count)
        for k in range(1, count):
            replica = copy.deepcopy(base)
            replica.pop("build", None)  # one image, built once for the base service
            replica["environment"][prefix + "PORT"] = str(ports[k])
            replica["environment"][prefix + "METRICS_PORT"] = str(metrics[k])
            log = replica["environment"].get("CASCADE_GATEWAY_EVENT_LOG", "")
            if log.startswith("file:"):  # one writer per embedded log: each gateway its own
                replica["environment"]["CASCADE_GATEWAY_EVENT_LOG"] = f"{log}-{k + 1}"
            replica["healthcheck"]["test"] = [
                *replica["healthcheck"]["test"][:-1],
                f"127.0.0.1:{ports[k]}",
            ]
            services[f"{stage}-{k + 1}"] = replica
    targets = {
        f"CASCADE_GATEWAY_{stage.upper()}_TARGET": "ipv4:"
        + ",".join(f"127.0.0.1:{p}" for p in replica_ports(_stage_port(compose, stage), count))
        for stage, count in counts.items()
        if stage != "gateway" and count > 1
    }
    if targets:
        # Every gateway replica balances over every stage replica, and starts after them.
        healthy = {"condition": "service_healthy"}
        stage_replicas = {n: healthy for n in services if "gateway" not in n}
        for name in ["gateway", *(n for n in services if n.startswith("gateway-"))]:
            gateway = services.setdefault(name, {})
            gateway["environment"] = {**gateway.get("environment", {}), **targets}
            gateway["depends_on"] = {**gateway.get("depends_on", {}), **stage_replicas}
    return services


def _stage_port(compose: Mapping, stage: str) -> int:
    return _env_int(compose["services"][stage], f"CASCADE_{stage.upper()}_SERVER_PORT")


def prometheus_config(config: Mapping, compose: Mapping, counts: Mapping[str, int]) -> dict:
    """`config` (prometheus-compose.yml) with every replica's metrics port added to the static
    target group that scrapes its stage, and rule files made absolute (the copy lives elsewhere)."""
    config = copy.deepcopy(config)
    config["rule_files"] = [
        path if path.startswith("/") else f"{PROMETHEUS_DIR}/{path}"
        for path in config.get("rule_files", [])
    ]
    for stage, count in counts.items():
        service = compose["services"][stage]
        port = _env_int(service, f"CASCADE_{stage.upper()}_SERVER_METRICS_PORT")
        first = f"127.0.0.1:{port}"
        groups = [
            group
            for job in config["scrape_configs"]
            for group in job.get("static_configs", [])
            if first in group.get("targets", [])
        ]
        if not groups:
            raise ValueError(f"no Prometheus scrape target {first} for {stage} in the config")
        extra = [f"127.0.0.1:{p}" for p in replica_ports(port, count)[1:]]
        for group in groups:
            group["targets"] = [*group["targets"], *extra]
    return config


def write_override(
    counts: Mapping[str, int],
    out: Path,
    compose_file: Path = REPO / "docker-compose.yml",
    prometheus_file: Path = REPO / "deploy/prometheus/prometheus-compose.yml",
) -> Path:
    """Writes out/replicas.yml (the compose override) and out/prometheus/prometheus-compose.yml;
    returns the override's path."""
    compose = yaml.safe_load(compose_file.read_text())
    services = replica_services(compose, counts)
    generated = out / "prometheus"
    generated.mkdir(parents=True, exist_ok=True)
    config = prometheus_config(yaml.safe_load(prometheus_file.read_text()), compose, counts)
    (generated / "prometheus-compose.yml").write_text(
        "# Generated by deploy/compose_replicas.py from deploy/prometheus/prometheus-compose.yml\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    # Compose resolves relative paths against the first file's folder (the repository root).
    try:
        mount = "./" + str(generated.resolve().relative_to(compose_file.resolve().parent))
    except ValueError:
        mount = str(generated.resolve())
    services["prometheus"] = {
        "volumes": [f"{mount}:{GENERATED_DIR}:ro"],
        "command": [
            f"--config.file={GENERATED_DIR}/prometheus-compose.yml",
            *[a for a in compose["services"]["prometheus"]["command"] if "config.file" not in a],
        ],
    }
    override = out / "replicas.yml"
    header = "# Generated by deploy/compose_replicas.py " + " ".join(
        f"{stage}={count}" for stage, count in counts.items()
    )
    override.write_text(header + "\n" + yaml.safe_dump({"services": services}, sort_keys=False))
    return override


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("replicas", nargs="*", help="stage=count, e.g. rank=2 (default 1 each)")
    parser.add_argument("--out", type=Path, default=Path(".cascade/compose"))
    args = parser.parse_args(argv)
    try:
        counts = parse_counts(args.replicas)
    except ValueError as error:
        parser.error(str(error))
    print(write_override(counts, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
