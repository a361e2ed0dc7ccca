"""What the Kubernetes schemas cannot see: that the manifests fit the services they run.

Each check takes the rendered objects and returns errors naming the object and the field (none:
passed). A container's settings are built with cascade.config's own loader from its --config file
(read out of the ConfigMap it mounts) and its environment, so a misspelled CASCADE_* variable, a
bad value or a port that differs from the server's default is an error here, not in a cluster.
"""

from __future__ import annotations

import importlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.stages import SERVER_MODULES
from cascade import config, profiles
from cascade.topology import SERVICES

Obj = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # what the container runs with `python -m`

    @property
    def env_prefix(self) -> str:
        return f"CASCADE_{self.name.upper()}_"

    def settings_type(self) -> type:
        """The settings dataclass of the module's StageServer declaration (`SERVER`)."""
        return importlib.import_module(self.module).SERVER.settings


STAGES = {name: Stage(name, SERVER_MODULES[name]) for name in SERVICES}
# Optional application Deployments an overlay may add beside the stages (the web console).
APPLICATIONS = {"app.console.server"}
CLUSTER_DOMAIN = "cluster.local"  # the kubelet's default; the gateway's targets spell it out


@dataclass
class Workload:
    """One stage's Deployment with its container's resolved environment and settings."""

    stage: Stage
    deployment: Obj
    container: Obj
    env: dict[str, str] = field(default_factory=dict)
    settings: Any = None  # the settings dataclass the server would build; None if it cannot
    profile: Any = None  # the profile (cascade.profiles.Profile) it reads, if any
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"Deployment/{self.deployment['metadata']['name']}"

    @property
    def pod(self) -> Obj:
        return self.deployment["spec"]["template"]["spec"]

    def port(self, name: str) -> int | None:
        ports = {p.get("name"): p["containerPort"] for p in self.container.get("ports", [])}
        return ports.get(name)


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in of_kind(objects, kind) if o["metadata"]["name"] == name), None)


def workloads(objects: list[Obj]) -> tuple[list[Workload], list[str]]:
    """The stage Deployments, resolved; errors for Deployments that run no known stage."""
    found, errors = [], []
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        containers = deployment["spec"]["template"]["spec"]["containers"]
        command = containers[0].get("command", []) if len(containers) == 1 else []
        module = command[2] if command[:2] == ["python", "-m"] and len(command) > 2 else None
        stage = next((s for s in STAGES.values() if s.module == module), None)
        if module in APPLICATIONS:  # not a stage: none of the stage checks apply
            continue
        if stage is None:
            errors.append(f"Deployment/{name}: want one container running `python -m <stage>`")
            continue
        workload = Workload(stage, deployment, containers[0])
        _resolve(workload, objects)
        found.append(workload)
    return found, errors


def _resolve(workload: Workload, objects: list[Obj]) -> None:
    namespace = workload.deployment["metadata"].get("namespace", "default")
    if "envFrom" in workload.container:  # its CASCADE_* names could not be checked
        workload.errors.append(f"{workload.name}: envFrom is not supported here; list env")
    for item in workload.container.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:  # $(VAR) refers to an earlier variable, as the kubelet expands it
            value = re.sub(
                r"\$\((\w+)\)", lambda m: workload.env.get(m[1], m[0]), str(item["value"])
            )
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            value = namespace
        elif "secretKeyRef" in source:
            value = f"<secret {source['secretKeyRef']['name']}/{source['secretKeyRef']['key']}>"
        else:
            workload.errors.append(f"{workload.name}: env {item['name']}: unsupported source")
            continue
        workload.env[item["name"]] = value
    settings_type = workload.stage.settings_type()
    prefix = workload.stage.env_prefix
    # cascade.config reads only the names it knows, so an unknown one would be silently ignored.
    read = _env_names(config._from_env(settings_type, prefix, workload.env))
    read.add(profiles.PROFILE_VARIABLE)  # not a field: the profile file every service reads
    for var in sorted(v for v in workload.env if v.startswith("CASCADE_") and v not in read):
        workload.errors.append(
            f"{workload.name}: env {var} is no field of {settings_type.__name__} "
            f"(prefix {prefix}): the server would ignore it"
        )
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = _settings_file(workload, objects, Path(folder))
            served = []
            if workload.env.get(profiles.PROFILE_VARIABLE):
                wanted = PurePosixPath(workload.env[profiles.PROFILE_VARIABLE])
                where = Path(folder) / "profile"
                copy = _mounted_file(workload, objects, where, wanted, profiles.PROFILE_VARIABLE)
                served = [profiles.load_profile(copy)]
            workload.profile = served[0] if served else None
            workload.settings = config.load_settings(
                settings_type,
                path,
                prefix,
                environ=workload.env,
                profiles=profiles.layers(served, workload.stage.name),
            )
    except (config.SettingsError, LookupError) as error:
        workload.errors.append(f"{workload.name}: settings do not load: {error}")


def _env_names(tree: dict) -> set[str]:
    names = set()
    for value in tree.values():
        names |= _env_names(value) if isinstance(value, dict) else {value.var}
    return names


def _settings_file(workload: Workload, objects: list[Obj], folder: Path) -> Path | None:
    """The --config file, copied out of the ConfigMap volume the container mounts it from."""
    command = workload.container["command"]
    if "--config" not in command:
        return None
    wanted = PurePosixPath(command[command.index("--config") + 1])
    return _mounted_file(workload, objects, folder, wanted, "--config")


def _mounted_file(
    workload: Workload, objects: list[Obj], folder: Path, wanted: PurePosixPath, label: str
) -> Path:
    """The file at `wanted` in the container (named by `label`), copied out of the ConfigMap
    volume holding it."""
    folder.mkdir(parents=True, exist_ok=True)
    for mount in workload.container.get("volumeMounts", []):
        if wanted.is_relative_to(mount["mountPath"]):
            volumes = [v for v in workload.pod.get("volumes", []) if v["name"] == mount["name"]]
            map_name = volumes[0].get("configMap", {}).get("name", "") if volumes else ""
            config_map = find(objects, "ConfigMap", map_name)
            key = str(wanted.relative_to(mount["mountPath"]))
            if config_map is None or key not in config_map.get("data", {}):
                raise LookupError(f"{label} {wanted}: no key {key!r} in ConfigMap {map_name!r}")
            path = folder / wanted.name
            path.write_text(config_map["data"][key])
            return path
    raise LookupError(f"{label} {wanted} is on no mounted volume")


def _selects(selector: dict[str, str], workload: Workload) -> bool:
    labels = workload.deployment["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_inventory(objects: list[Obj]) -> list[str]:
    found, errors = workloads(objects)
    names = [w.stage.name for w in found]
    for stage in STAGES:
        if names.count(stage) != 1:
            errors.append(f"stage {stage}: {names.count(stage)} Deployments, want 1")
        for kind in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            if find(objects, kind, stage) is None:
                errors.append(f"stage {stage}: no {kind} named {stage}")
    return errors


def check_settings(objects: list[Obj]) -> list[str]:
    errors = []
    for w in workloads(objects)[0]:
        errors += w.errors
        if w.settings is None:
            continue
        server, defaults = w.settings.server, w.stage.settings_type()().server
        if server.host != "0.0.0.0":  # the kubelet probes, and peers dial, the pod IP
            errors.append(f"{w.name}: server.host is {server.host!r}, want '0.0.0.0'")
        for port_name, attr in (("grpc", "port"), ("metrics", "metrics_port")):
            want = getattr(defaults, attr)
            if getattr(server, attr) != want or w.port(port_name) != want:
                errors.append(
                    f"{w.name}: containerPort {port_name}={w.port(port_name)}, settings "
                    f"server.{attr}={getattr(server, attr)}, the server's default is {want}"
                )
        annotations = w.deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/port") != str(server.metrics_port):
            errors.append(f"{w.name}: prometheus.io/port is not the metrics port")
        grace = w.pod.get("terminationGracePeriodSeconds", 30)
        if server.shutdown_delay_s <= 0 or grace <= server.shutdown_delay_s + server.grace_s:
            errors.append(
                f"{w.name}: need server.shutdown_delay_s > 0 and terminationGracePeriodSeconds "
                f"({grace}) > shutdown_delay_s + grace_s ({server.shutdown_delay_s} + "
                f"{server.grace_s})"
            )
    return errors


def check_probes(objects: list[Obj]) -> list[str]:
    """gRPC probes on the gRPC port; on the plaintext probe port when the server speaks TLS (the
    kubelet's gRPC probe cannot), which must be the server's probe_port."""
    errors = []
    for w in workloads(objects)[0]:
        server = w.settings.server if w.settings is not None else None
        tls = server is not None and server.tls_cert is not None
        want = w.port("probe" if tls else "grpc")
        if tls and (want is None or server.probe_port != want):
            errors.append(
                f"{w.name}: TLS on the gRPC port needs a containerPort named probe equal to "
                f"server.probe_port ({server.probe_port}), got {want}"
            )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = w.container.get(probe, {}).get("grpc", {}).get("port")
            if port is None or port != want:
                errors.append(f"{w.name}: {probe} must be a gRPC probe on port {want}")
    return errors


def check_hardening(objects: list[Obj]) -> list[str]:
    errors = []
    for w in workloads(objects)[0]:
        pod, box = w.pod.get("securityContext", {}), w.container.get("securityContext", {})
        wanted = {
            "runAsNonRoot": pod.get("runAsNonRoot") is True,
            "runAsUser > 0": pod.get("runAsUser", 0) > 0,
            "seccompProfile RuntimeDefault": pod.get("seccompProfile", {}).get("type")
            == "RuntimeDefault",
            "readOnlyRootFilesystem": box.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation false": box.get("allowPrivilegeEscalation") is False,
            "capabilities drop ALL": box.get("capabilities", {}).get("drop") == ["ALL"],
        }
        errors += [
            f"{w.name}: securityContext lacks {name}" for name, ok in wanted.items() if not ok
        ]
        resources = w.container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        if "cpu" not in requests or "memory" not in requests or "memory" not in limits:
            errors.append(f"{w.name}: needs cpu and memory requests and a memory limit")
        elif requests["memory"] != limits["memory"]:
            errors.append(f"{w.name}: memory request != limit (an overcommitted pod is evicted)")
    return errors


def _application(objects: list[Obj], selector: dict[str, str]) -> bool:
    """Does `selector` pick the pods of an application Deployment (APPLICATIONS)?"""
    for deployment in of_kind(objects, "Deployment"):
        template = deployment["spec"]["template"]
        command = template["spec"]["containers"][0].get("command", [])
        labels = template["metadata"].get("labels", {})
        if command[2:3] and command[2] in APPLICATIONS and selector:
            if all(labels.get(k) == v for k, v in selector.items()):
                return True
    return False


def check_services(objects: list[Obj]) -> list[str]:
    errors, found = [], workloads(objects)[0]
    for service in of_kind(objects, "Service"):
        name, spec = f"Service/{service['metadata']['name']}", service["spec"]
        if _application(objects, spec.get("selector", {})):
            continue  # an application's HTTP Service (the console), not a stage's gRPC one
        if spec.get("clusterIP") != "None":
            errors.append(f"{name}: not headless (clusterIP: None): gRPC would pin one pod")
        targets = [w for w in found if _selects(spec.get("selector", {}), w)]
        if not targets and _stateful_set(objects, spec.get("selector", {})) is not None:
            continue  # the shared store's Service: check_store
        if len(targets) != 1:
            errors.append(f"{name}: selector matches {len(targets)} Deployments' pods, want 1")
            continue
        for port in spec.get("ports", []):
            # Clients dial the pod IPs the headless Service's DNS returns, on the Service port.
            target_port = port.get("targetPort", port["port"])
            if isinstance(target_port, str):
                target_port = targets[0].port(target_port)
            if port["port"] != target_port:
                errors.append(f"{name}: port {port['port']} != its containerPort ({target_port})")
    return errors


def check_scaling(objects: list[Obj]) -> list[str]:
    errors, found = [], workloads(objects)[0]
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        name, spec = f"HorizontalPodAutoscaler/{hpa['metadata']['name']}", hpa["spec"]
        ref = spec["scaleTargetRef"]
        target = next((w for w in found if w.deployment["metadata"]["name"] == ref["name"]), None)
        if ref["kind"] != "Deployment" or target is None:
            errors.append(f"{name}: scaleTargetRef {ref['kind']}/{ref['name']} does not exist")
        elif "replicas" in target.deployment["spec"]:
            errors.append(f"{target.name}: sets replicas, which each apply resets under the HPA")
        if not 2 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]:
            errors.append(f"{name}: want 2 <= minReplicas <= maxReplicas (a drain keeps one pod)")
        resources = [m["resource"] for m in spec.get("metrics", []) if m["type"] == "Resource"]
        if not any(r["name"] == "cpu" and r["target"]["type"] == "Utilization" for r in resources):
            errors.append(f"{name}: no CPU utilisation target")
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        name = f"PodDisruptionBudget/{pdb['metadata']['name']}"
        selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if sum(_selects(selector, w) for w in found) != 1:
            errors.append(f"{name}: selector must match exactly one Deployment's pods")
    return errors


def check_gateway_targets(objects: list[Obj]) -> list[str]:
    errors, found = [], workloads(objects)[0]
    gateway = next((w for w in found if w.stage.name == "gateway"), None)
    if gateway is None or gateway.settings is None:
        return ["no gateway Deployment with loadable settings"]
    namespace = gateway.deployment["metadata"].get("namespace", "default")
    for stage in (s for s in STAGES if s != "gateway"):
        target = getattr(gateway.settings, f"{stage}_target")
        workload = next((w for w in found if w.stage.name == stage), None)
        port = workload.port("grpc") if workload else None
        want = f"dns:///{stage}.{namespace}.svc.{CLUSTER_DOMAIN}:{port}"
        if target != want or find(objects, "Service", stage) is None:
            errors.append(f"{gateway.name}: {stage}_target is {target!r}, want {want!r}")
    return errors


def _stateful_set(objects: list[Obj], selector: dict[str, str]) -> Obj | None:
    for stateful in of_kind(objects, "StatefulSet"):
        labels = stateful["spec"]["template"]["metadata"].get("labels", {})
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            return stateful
    return None


def check_store(objects: list[Obj]) -> list[str]:
    """Every stage reads one shared store: the same redis:// URL, naming a pod of a StatefulSet
    through its headless Service, on the port the container listens on."""
    errors, found = [], workloads(objects)[0]
    stores = {w.name: w.settings.store for w in found if w.settings is not None}
    if len(set(stores.values())) != 1:
        return [f"the stages use different stores: {stores}"]
    (url,) = set(stores.values())
    match = re.fullmatch(r"redis://(?:([\w-]+)\.)?([\w-]+)\.([\w-]+)\.svc\.([\w.]+):(\d+)/\d+", url)
    if match is None:
        return [
            f"store is {url!r}: replicas need a shared redis://<pod>.<service>.<namespace>"
            f".svc.{CLUSTER_DOMAIN}:<port>/<db>"
        ]
    pod, service_name, namespace, domain, port = match.groups()
    service = find(objects, "Service", service_name)
    stateful = service and _stateful_set(objects, service["spec"].get("selector", {}))
    if service is None or stateful is None:
        return [f"store {url!r}: no Service {service_name} selecting a StatefulSet's pods"]
    if service["spec"].get("clusterIP") != "None" or stateful["spec"].get("serviceName") != (
        service_name
    ):
        errors.append(f"Service/{service_name}: must be headless and the StatefulSet's service")
    name = stateful["metadata"]["name"]
    if pod is not None and not re.fullmatch(rf"{name}-\d+", pod):
        errors.append(f"store {url!r}: {pod} is no pod of StatefulSet/{name}")
    if namespace != service["metadata"].get("namespace", "default") or domain != CLUSTER_DOMAIN:
        errors.append(f"store {url!r}: namespace or cluster domain differ from the Service's")
    ports = [
        p["containerPort"]
        for c in stateful["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    ]
    if int(port) not in ports:
        errors.append(f"store {url!r}: StatefulSet/{name} listens on {ports}, not {port}")
    return errors


# The stages that replay the gateway's event log at start (uploads and follow changes since the
# bundle; recall's embedded store also its events).
LOG_READERS = ("recall", "prerank", "rank")


def check_event_log(objects: list[Obj]) -> list[str]:
    """The gateway's event log is the Redis one (a pod's file log is seen by no other pod, and
    lost with the pod), and recall, pre-rank and rank read that same log when they start."""
    found = {w.stage.name: w for w in workloads(objects)[0] if w.settings is not None}
    gateway = found.get("gateway")
    if gateway is None:
        return ["no gateway settings to check the event log of"]
    url = gateway.settings.event_log
    if not url.startswith("redis://"):
        return [f"{gateway.name}: event_log is {url!r}: a pod's own log; use the shared redis://"]
    return [
        f"{found[stage].name}: event_log is {found[stage].settings.event_log!r}, not the "
        f"gateway's {url!r}: the uploads since the bundle are lost when it restarts"
        for stage in LOG_READERS
        if stage in found and found[stage].settings.event_log != url
    ]


CHECKS: list[tuple[str, Callable[[list[Obj]], list[str]]]] = [
    ("every stage has a Deployment, a Service, an HPA and a PDB", check_inventory),
    ("settings load from ConfigMap + env; every CASCADE_* var is a field; ports, host, "
     "scrape port and grace period fit the server", check_settings),
    ("startup, readiness and liveness are gRPC probes on the gRPC port (the probe port under TLS)",
     check_probes),
    ("non-root, read-only root, no privilege escalation, requests and limits", check_hardening),
    ("Services are headless, select one stage's pods, expose its container ports", check_services),
    ("HPAs target existing Deployments (no replicas field), PDBs select one stage", check_scaling),
    ("the gateway's targets are the stages' headless Services on their ports",
     check_gateway_targets),
    ("every stage shares one Redis store: a StatefulSet pod through its headless Service",
     check_store),
    ("the gateway's event log is on Redis, and recall, pre-rank and rank read it at start",
     check_event_log),
]  # fmt: skip
