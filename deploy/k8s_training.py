"""Checks of the multi-node training manifests (deploy/k8s/training/), run by deploy.k8s_validate
after the schemas: the Indexed Job, torchrun's rendezvous and the Service it is found through
agree with each other, and the pods are as locked down as the serving ones."""

from __future__ import annotations

from collections.abc import Callable

from deploy.k8s_checks import Obj, of_kind

# The training modules that run data-parallel (app/stages.py DATA_PARALLEL's modules).
TRAINERS = ("services.recall.train", "training.rank_train", "training.prerank_train")
WORKER = "training.distributed"
BUNDLE_CLAIM = "cascade-bundle"  # the volume the serving pods read (deploy/k8s/base/storage.yaml)


def _flag(command: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, part in enumerate(command):
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
        if part == name and i + 1 < len(command):
            return command[i + 1]
    return None


def _jobs(objects: list[Obj]) -> list[tuple[Obj, Obj, list[str]]]:
    """(job, its single container, the container's command) per Job."""
    found = []
    for job in of_kind(objects, "Job"):
        containers = job["spec"]["template"]["spec"]["containers"]
        found.append((job, containers[0], containers[0].get("command", [])))
    return found


def check_job(objects: list[Obj]) -> list[str]:
    errors = [] if _jobs(objects) else ["no training Job"]
    for job, _, command in _jobs(objects):
        name, spec = job["metadata"]["name"], job["spec"]
        pod = spec["template"]["spec"]
        nodes = _flag(command, "--nnodes")
        if spec.get("completionMode") != "Indexed":
            errors.append(f"Job/{name}: completionMode is not Indexed (pods need stable names)")
        if not (str(spec.get("completions")) == str(spec.get("parallelism")) == str(nodes)):
            errors.append(
                f"Job/{name}: completions {spec.get('completions')}, parallelism "
                f"{spec.get('parallelism')} and torchrun --nnodes {nodes} must agree"
            )
        if pod.get("restartPolicy") != "Never" or spec.get("backoffLimit") != 0:
            errors.append(f"Job/{name}: a failed pod must fail the run (Never, backoffLimit 0)")
        if command[:3] != ["python", "-m", "torch.distributed.run"]:
            errors.append(f"Job/{name}: the container does not run torchrun")
        module = command[command.index(WORKER) + 1] if WORKER in command else None
        if module not in TRAINERS:
            errors.append(f"Job/{name}: torchrun must run {WORKER} with one of {TRAINERS}")
        if "--version" not in " ".join(command):
            errors.append(f"Job/{name}: the workers need --version (the bundle they write)")
    return errors


def check_rendezvous(objects: list[Obj]) -> list[str]:
    errors = []
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for job, container, command in _jobs(objects):
        name, pod = job["metadata"]["name"], job["spec"]["template"]["spec"]
        if _flag(command, "--rdzv-backend") != "c10d":
            errors.append(f"Job/{name}: the rendezvous backend is not c10d")
        endpoint = _flag(command, "--rdzv-endpoint") or ""
        host, _, port = endpoint.partition(":")
        subdomain = pod.get("subdomain")
        if host != f"{name}-0.{subdomain}":
            errors.append(f"Job/{name}: the endpoint {endpoint!r} is not pod 0 ({name}-0.<sub>)")
        service = services.get(subdomain or "")
        if service is None:
            errors.append(f"Job/{name}: no Service {subdomain!r} for the pods' subdomain")
            continue
        labels = job["spec"]["template"]["metadata"].get("labels", {})
        selector = service["spec"].get("selector", {})
        if service["spec"].get("clusterIP") != "None":
            errors.append(f"Service/{subdomain}: not headless (pods need their own DNS names)")
        if not service["spec"].get("publishNotReadyAddresses"):
            errors.append(f"Service/{subdomain}: publishNotReadyAddresses must be true")
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"Service/{subdomain}: does not select Job/{name}'s pods")
        ports = {p["containerPort"] for p in container.get("ports", [])}
        if not port.isdigit() or int(port) not in ports:
            errors.append(f"Job/{name}: the rendezvous port {port!r} is not a container port")
    return errors


def check_pods(objects: list[Obj]) -> list[str]:
    errors = []
    for job, container, _ in _jobs(objects):
        name, pod = job["metadata"]["name"], job["spec"]["template"]["spec"]
        context = container.get("securityContext", {})
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            errors.append(f"Job/{name}: runAsNonRoot is not set")
        if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation"):
            errors.append(f"Job/{name}: read-only root and no privilege escalation required")
        resources = container.get("resources", {})
        if not resources.get("requests") or not resources.get("limits"):
            errors.append(f"Job/{name}: requests and limits required")
        claims = [
            v["persistentVolumeClaim"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        ]
        if not any(c["claimName"] == BUNDLE_CLAIM and not c.get("readOnly") for c in claims):
            errors.append(f"Job/{name}: does not write the {BUNDLE_CLAIM} volume")
    return errors


CHECKS: list[tuple[str, Callable[[list[Obj]], list[str]]]] = [
    (
        "an Indexed Job: completions = parallelism = torchrun --nnodes; a failed pod fails it; "
        "torchrun runs a data-parallel trainer with --version",
        check_job,
    ),
    (
        "c10d rendezvous on pod 0 through a headless Service that selects the Job's pods and "
        "publishes them before they are ready",
        check_rendezvous,
    ),
    (
        "non-root, read-only root, no privilege escalation, requests and limits; writes the "
        "serving pods' bundle volume",
        check_pods,
    ),
]
