"""What deploy/Dockerfile relies on, checked without Docker: every service starts from the serving
dependencies alone (no torch, no onnx exporter), and the build context carries the package."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from app.stages import SERVER_MODULES as MODULES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "deploy/Dockerfile").read_text()
TRAIN_ONLY = ("torch", "onnx", "onnxscript")  # pyproject's `train` extra


@pytest.mark.timeout(60)
def test_every_service_module_imports_without_the_training_dependencies():
    blocker = textwrap.dedent(f"""
        import importlib, sys

        class TrainingOnly:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {TRAIN_ONLY!r}:
                    raise ImportError(f"{{name}} is not in the serving image")

        sys.meta_path.insert(0, TrainingOnly())
        for module in {sorted({*MODULES.values(), "cascade.healthcheck"})!r}:
            importlib.import_module(module)
    """)
    result = subprocess.run(
        [sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_image_build_checks_every_service_module():
    imports = re.search(r'python -c "import (services[^"]+)"', DOCKERFILE).group(1)
    checked = {name.strip(" \\\n") for name in imports.split(",")}
    assert checked == {*MODULES.values(), "cascade.healthcheck"}


def test_the_build_context_carries_what_pip_install_needs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= allowed
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= allowed
    assert not any(dep.split("=")[0] in TRAIN_ONLY for dep in pyproject["project"]["dependencies"])


def test_the_image_runs_as_the_non_root_user_kubernetes_expects():
    assert "USER 10001:10001" in DOCKERFILE
    k8s = (ROOT / "deploy/k8s/base/rank.yaml").read_text()
    assert "runAsUser: 10001" in k8s and "image: cascade:latest" in k8s
