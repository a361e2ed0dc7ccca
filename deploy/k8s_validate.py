"""Offline validation of the Kubernetes base in deploy/k8s/base and of every overlay in
deploy/k8s/overlays/<name>: render, schemas, fit to the services.

Renders each kustomization with `kubectl kustomize`, validates every object against the Kubernetes
OpenAPI schemas shipped by kubernetes-validate (strict: an unknown field is an error) for the
oldest and the newest Kubernetes we support, then runs deploy.k8s_checks; then the same for each
overlay under deploy/k8s/overlays/ (the profile overlays, deploy/profile_overlays.py), and the
multi-node training Job in deploy/k8s/training/ with its own checks (deploy.k8s_training).

    python -m deploy.k8s_validate [--dir deploy/k8s/base] [--out results/ops/k8s_validate.txt]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.version import __version__ as VALIDATOR_VERSION

from deploy.k8s_checks import STAGES, Obj, Workload, workloads
from deploy.k8s_security import ALL_CHECKS
from deploy.k8s_training import CHECKS as TRAINING_CHECKS

K8S_DIR = Path(__file__).parent / "k8s" / "base"
OVERLAYS_DIR = K8S_DIR.parent / "overlays"  # each folder one kustomization over the base
TRAINING_DIR = K8S_DIR.parent / "training"  # the multi-node training Job, applied on its own
# 1.27: native gRPC probes are GA; 1.37: the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.27", "1.37")


class RenderError(RuntimeError):
    """kubectl is missing or the kustomization does not build."""


def render(directory: Path = K8S_DIR) -> list[Obj]:
    """The objects `kubectl kustomize` builds from `directory`."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl not found on PATH (it renders the kustomization)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def kubectl_version() -> str:
    out = subprocess.run(
        ["kubectl", "version", "--client", "-o", "json"], capture_output=True, timeout=30
    )
    version: dict[str, Any] = json.loads(out.stdout)
    return (
        f"kubectl {version['clientVersion']['gitVersion']}, kustomize {version['kustomizeVersion']}"
    )


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def schema_errors(objects: list[Obj], version: str) -> list[str]:
    """Strict OpenAPI validation of each object against Kubernetes `version`."""
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path) or "(top)"
            errors.append(f"{label(obj)}: {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{label(obj)}: {error.message}")
    return errors


def report(directory: Path = K8S_DIR) -> tuple[str, int]:
    """The validation report and its number of errors."""
    objects = render(directory)
    kinds = collections.Counter(o["kind"] for o in objects)
    lines = [
        f"render: kubectl kustomize {_shown(directory)} ({kubectl_version()}): {len(objects)} "
        f"objects: " + ", ".join(f"{n} {k}" for k, n in kinds.items()),
        f"schemas: kubernetes-validate {VALIDATOR_VERSION}, strict (unknown fields are errors)",
    ]
    n_errors = 0
    for version in KUBERNETES_VERSIONS:
        errors = schema_errors(objects, version)
        n_errors += len(errors)
        ok = len(objects) - len({e.split(":")[0] for e in errors})
        lines.append(
            f"  {'ok  ' if not errors else 'FAIL'} Kubernetes {version}: {ok}/{len(objects)}"
        )
        lines += [f"       {e}" for e in errors]
    lines.append("checks:")
    training = directory.resolve() == TRAINING_DIR.resolve()
    for title, check in TRAINING_CHECKS if training else ALL_CHECKS:
        errors = check(objects)
        n_errors += len(errors)
        lines.append(f"  {'ok  ' if not errors else 'FAIL'} {title}")
        lines += [f"       {e}" for e in errors]
    if not training:
        lines += ["stages:", *_stage_table(objects)]
    lines.append(f"result: {n_errors} errors")
    return "\n".join(lines) + "\n", n_errors


def _shown(directory: Path) -> str:
    try:
        return str(directory.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(directory)


def _stage_table(objects: list[Obj]) -> list[str]:
    hpas = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"].startswith("Horizontal")}
    rows = [
        (
            "stage",
            "grpc",
            "metrics",
            "replicas",
            "cpu req/lim",
            "memory",
            "CASCADE_* env",
            "profile",
            "stop: delay+grace < termination grace",
        )
    ]
    for w in sorted(workloads(objects)[0], key=lambda w: list(STAGES).index(w.stage.name)):
        hpa = hpas.get(w.deployment["metadata"]["name"], {})
        resources = w.container.get("resources", {})
        cpu = f"{resources.get('requests', {}).get('cpu')}/{resources.get('limits', {}).get('cpu')}"
        env = sum(v.startswith("CASCADE_") for v in w.env)
        rows.append(
            (
                w.stage.name,
                str(w.port("grpc")),
                str(w.port("metrics")),
                f"{hpa.get('minReplicas')}-{hpa.get('maxReplicas')}",
                cpu,
                str(resources.get("limits", {}).get("memory")),
                str(env),
                w.profile.name if w.profile is not None else "-",
                _drain(w),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(n) for c, n in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _drain(w: Workload) -> str:
    server = w.settings.server if w.settings is not None else None
    if server is None:
        return "?"
    termination = w.pod.get("terminationGracePeriodSeconds", 30)
    return f"{server.shutdown_delay_s:g}+{server.grace_s:g} s < {termination} s"


def kustomizations() -> list[Path]:
    """The base, then every overlay (deploy/k8s/overlays/<name>), by name, then training."""
    overlays = sorted(p.parent for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))
    return [K8S_DIR, *overlays, TRAINING_DIR]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, action="append", help="a kustomization folder (default: all)"
    )
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    directories = args.dir or kustomizations()
    try:
        reports = [report(directory) for directory in directories]
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = "\n".join(section for section, _ in reports)
    n_errors = sum(errors for _, errors in reports)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if n_errors else 0


if __name__ == "__main__":
    sys.exit(main())
