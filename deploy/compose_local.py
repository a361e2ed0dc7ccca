"""docker-compose.yml's settings for the local stack (app/stack.py), so that what the containers
are told can be tested without Docker: each service's environment from the compose file, its
`${VAR:-default}` values interpolated from a given shell, its container paths mapped to host
folders through the service's own volumes. The local stack keeps choosing the ports, the stage
targets and the store (a redis-server of its own): those are the compose file's fixed host ports
and Redis, which a test on a shared machine must not take.

    environments = compose_environments(compose, {"./artifacts": ..., "gateway-state": ...}, shell)
    app.stack.up(..., store="redis", environments=environments)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cascade.topology import SERVICES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")
# Set by the local stack itself (ports, the targets that name them, its own Redis).
LOCAL_SUFFIXES = ("_SERVER_PORT", "_SERVER_METRICS_PORT", "_TARGET", "_STORE")


def interpolate(value: str, shell: Mapping[str, str]) -> str:
    """Compose's `${VAR:-default}`: the shell's value when set and not empty, else the default."""
    return _DEFAULTED.sub(lambda m: shell.get(m[1]) or m[2], value)


def mounts(service: Mapping, sources: Mapping[str, Path], shell: Mapping[str, str]) -> dict:
    """{container path: host path} for a service's volumes; `sources` maps each volume's source
    (a named volume or a path as the compose file writes it, e.g. "./artifacts") to a folder. A
    file of the repository itself (e.g. ./deploy/profiles/default.toml) is its own source."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = interpolate(volume, shell).split(":")[:2]
        if source in sources:
            found[target] = Path(sources[source])
        elif source.startswith("./") and (ROOT / source).is_file():
            found[target] = ROOT / source
        else:
            raise ValueError(f"volume {volume!r}: no host folder given for {source!r}")
    return found


def compose_environments(
    compose: Mapping, sources: Mapping[str, Path], shell: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Each Cascade service's environment as docker-compose.yml gives it, for a local process:
    values interpolated from `shell`, container paths replaced by host ones (longest mount
    first), the ports, targets and store left out (LOCAL_SUFFIXES)."""
    environments = {}
    for name in SERVICES:
        service = compose["services"][name]
        paths = sorted(mounts(service, sources, shell).items(), key=lambda m: -len(m[0]))
        environment = {}
        for key, raw in service.get("environment", {}).items():
            if key.endswith(LOCAL_SUFFIXES):
                continue
            value = interpolate(str(raw), shell)
            for target, host in paths:  # a whole path component only
                value = re.sub(re.escape(target) + r"(?=/|$)", str(host), value)
            environment[key] = value
        environments[name] = environment
    return environments
