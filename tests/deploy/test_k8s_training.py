"""The multi-node training manifests (deploy/k8s/training/): they render, pass the strict schemas,
pass their checks, and each check catches the mistake it is there for."""

from __future__ import annotations

import copy

import pytest

from deploy.k8s_checks import Obj, find
from deploy.k8s_training import CHECKS, check_job, check_pods, check_rendezvous
from deploy.k8s_validate import KUBERNETES_VERSIONS, TRAINING_DIR, render, schema_errors


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return render(TRAINING_DIR)


def _command(objects: list[Obj]) -> list[str]:
    return find(objects, "Job", "train")["spec"]["template"]["spec"]["containers"][0]["command"]


def _replace(objects: list[Obj], old: str, new: str) -> None:
    command = _command(objects)
    command[command.index(old)] = new


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_the_strict_schema(objects, version):
    assert schema_errors(objects, version) == []


@pytest.mark.parametrize("title,check", CHECKS, ids=[c.__name__ for _, c in CHECKS])
def test_every_check_passes(objects, title, check):
    assert check(objects) == []


def _read_only_bundle(objects: list[Obj]) -> None:
    pod = find(objects, "Job", "train")["spec"]["template"]["spec"]
    pod["volumes"][0]["persistentVolumeClaim"]["readOnly"] = True


MISTAKES = [
    ("three nodes in torchrun, two pods", lambda o: _replace(o, "--nnodes=2", "--nnodes=3"),
     check_job, "must agree"),
    ("a stage that has no data-parallel trainer",
     lambda o: _replace(o, "training.rank_train", "services.rerank.train"),
     check_job, "torchrun must run training.distributed"),
    ("an endpoint that is not pod 0",
     lambda o: _replace(o, "--rdzv-endpoint=train-0.train:29500", "--rdzv-endpoint=train:29500"),
     check_rendezvous, "is not pod 0"),
    ("a Service with a cluster IP",
     lambda o: find(o, "Service", "train")["spec"].pop("clusterIP"),
     check_rendezvous, "not headless"),
    ("a rendezvous port the container does not open",
     lambda o: _replace(o, "--rdzv-endpoint=train-0.train:29500",
                        "--rdzv-endpoint=train-0.train:29400"),
     check_rendezvous, "is not a container port"),
    ("the bundle volume mounted read-only", _read_only_bundle,
     check_pods, "does not write the cascade-bundle volume"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mutate,check,message", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_each_check_catches_its_mistake(objects, mutate, check, message):
    broken = copy.deepcopy(objects)
    mutate(broken)
    errors = check(broken)
    assert any(message in error for error in errors), errors
