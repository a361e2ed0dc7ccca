"""Every service's real settings checks, through its real entry point: `python -m <service>` with
one bad environment variable exits with code 2 and names the variable (before loading anything)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
REPO_ROOT = Path(__file__).resolve().parents[2]

# (module, variable, value): a value of the wrong type, a port out of range, a cross-field rule
CASES = [
    ("gateway.server", "CASCADE_GATEWAY_SERVER_PORT", "fifty"),
    ("gateway.server", "CASCADE_GATEWAY_SERVER_PORT", "70000"),
    ("gateway.server", "CASCADE_GATEWAY_DEFAULT_COUNT", "500"),
    ("gateway.server", "CASCADE_GATEWAY_BREAKER_COOLDOWN_S", "0"),
    ("gateway.server", "CASCADE_GATEWAY_RANK_SHARE", "-1"),
    ("services.recall.server", "CASCADE_RECALL_SERVER_MAX_WORKERS", "many"),
    ("services.recall.server", "CASCADE_RECALL_CLOCK", "sundial"),
    ("services.recall.server", "CASCADE_RECALL_DEFAULT_COUNT", "0"),
    ("services.prerank.server", "CASCADE_PRERANK_SERVER_PORT", "-5"),
    ("services.prerank.server", "CASCADE_PRERANK_MAX_CANDIDATES", "0"),
    ("services.rank.server", "CASCADE_RANK_SERVER_GRACE_S", "soon"),
    ("services.rank.server", "CASCADE_RANK_MAX_CANDIDATES", "0"),
    ("services.rerank.server", "CASCADE_RERANK_SERVER_METRICS_PORT", "-2"),
    ("services.rerank.server", "CASCADE_RERANK_DEFAULT_COUNT", "0"),
]


@pytest.mark.parametrize("module, variable, value", CASES)
def test_a_bad_variable_stops_the_service_with_code_2_naming_it(tmp_path, module, variable, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env[variable] = value
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert variable in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr  # a clear message, not a crash
