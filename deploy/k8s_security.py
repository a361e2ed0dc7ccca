"""The Kubernetes base's security, checked offline like the rest (deploy/k8s_checks.py): every
port speaks TLS from a mounted Secret, the stages mutual TLS with the gateway as their only
caller, and NetworkPolicies let a stage's gRPC port be reached from the gateway's pods only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from cascade.callers import GATEWAY_IDENTITY
from deploy.k8s_checks import CHECKS, Obj, Workload, of_kind, workloads

PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}


def _secret_files(workload: Workload) -> dict[PurePosixPath, str]:
    """Files the container sees from Secret volumes: path -> the Secret key behind it."""
    files = {}
    volumes = {v["name"]: v for v in workload.pod.get("volumes", [])}
    for mount in workload.container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        for item in secret.get("items", []):
            files[PurePosixPath(mount["mountPath"]) / item["path"]] = item["key"]
    return files


def check_transport(objects: list[Obj]) -> list[str]:
    errors = []
    found = workloads(objects)[0]
    gateway_key = None
    for w in found:
        if w.settings is None:
            continue  # check_settings reports why
        server, files = w.settings.server, _secret_files(w)
        paths = {"server.tls_cert": server.tls_cert, "server.tls_key": server.tls_key}
        if w.stage.name == "gateway":
            paths |= {
                f"stage_tls_{n}": getattr(w.settings, f"stage_tls_{n}")
                for n in ("ca", "cert", "key")
            }
            if not w.settings.require_api_token:
                errors.append(f"{w.name}: require_api_token must be true (no silent auth off)")
            key = w.settings.stage_tls_key
            gateway_key = files.get(PurePosixPath(str(key))) if key else None
        else:
            paths["server.tls_client_ca"] = server.tls_client_ca
            if GATEWAY_IDENTITY not in server.allowed_callers:
                errors.append(f"{w.name}: allowed_callers lacks {GATEWAY_IDENTITY}")
        for setting, path in paths.items():
            if path is None:
                errors.append(f"{w.name}: {setting} is not set: the port would be plaintext")
            elif PurePosixPath(str(path)) not in files:
                errors.append(f"{w.name}: {setting} {path} is in no mounted Secret item")
        if server.reflection:
            errors.append(f"{w.name}: server.reflection is on (off outside the local stack)")
    for w in found:  # a stage holding the gateway's client key could act as the gateway
        if w.stage.name != "gateway" and gateway_key in _secret_files(w).values():
            errors.append(f"{w.name}: mounts the gateway's client key ({gateway_key})")
    return errors


def _selects(selector: dict, workload: Workload) -> bool:
    labels = workload.deployment["spec"]["template"]["metadata"].get("labels", {})
    wanted = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _ports(rule: Obj, workload: Workload) -> set[str]:
    """The container port names a rule opens ({"*"}: every port)."""
    if "ports" not in rule:
        return {"*"}
    names = {p.get("name"): p["containerPort"] for p in workload.container.get("ports", [])}
    by_number = {number: name for name, number in names.items()}
    return {
        p["port"] if isinstance(p["port"], str) else by_number.get(p["port"], "?")
        for p in rule["ports"]
    }


def _denies_all(spec: Obj) -> bool:
    selects_all = spec.get("podSelector") == {}
    return selects_all and "Ingress" in spec.get("policyTypes", []) and not spec.get("ingress")


def check_network_policies(objects: list[Obj]) -> list[str]:
    errors, found = [], workloads(objects)[0]
    policies = of_kind(objects, "NetworkPolicy")
    deny = [p for p in policies if _denies_all(p["spec"])]
    if not deny:
        errors.append("no default-deny ingress NetworkPolicy (podSelector {}, no ingress rules)")
    gateway = next((w for w in found if w.stage.name == "gateway"), None)
    for w in found:
        mine = [p for p in policies if p not in deny and _selects(p["spec"]["podSelector"], w)]
        if len(mine) != 1:
            errors.append(f"{w.name}: {len(mine)} NetworkPolicies select its pods, want 1")
            continue
        name = f"NetworkPolicy/{mine[0]['metadata']['name']}"
        for rule in mine[0]["spec"].get("ingress", []):
            ports, sources = _ports(rule, w), rule.get("from")
            if "*" in ports:
                errors.append(f"{name}: a rule without ports opens every port")
            if "grpc" in ports and w.stage.name != "gateway":
                ok = bool(sources) and all(
                    set(s) == {"podSelector"}
                    and gateway is not None
                    and _selects(s["podSelector"], gateway)
                    for s in sources
                )
                if not ok:
                    errors.append(f"{name}: the gRPC port must admit the gateway's pods only")
            if "metrics" in ports:
                ok = bool(sources) and all(
                    s.get("podSelector", {}).get("matchLabels") == PROMETHEUS for s in sources
                )
                if not ok:
                    errors.append(f"{name}: the metrics port must admit Prometheus only")
    return errors


ALL_CHECKS: list[tuple[str, Callable[[list[Obj]], list[str]]]] = [
    *CHECKS,
    ("TLS from mounted Secrets on every port, mutual TLS on the stages with the gateway as the "
     "caller, the API token required, reflection off", check_transport),
    ("a default deny; each stage's gRPC port open to the gateway's pods only, metrics to "
     "Prometheus only", check_network_policies),
]  # fmt: skip
