"""A real local stack (five service processes on free loopback ports) with the console beside
it, and a headless Chromium driven by Selenium. The stack serves the repository's ml-100k bundle
(artifacts/current after `make demo`) when there is one, else a small synthetic world trained
here (about a minute). Under CI=true a missing browser fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import stack
from app.console import launch
from app.console.screenshots import headless_chromium
from app.stack import Stack
from app.stages import TRAIN_MODULES

REPO = Path(__file__).resolve().parents[3]
EXPLAIN_TOKEN = "console-test-token"
TRAINERS = (  # app/stages.py's training modules, in the order a bundle needs them
    (TRAIN_MODULES["recall"],),
    (TRAIN_MODULES["rank"], "--max-epochs", "1"),
    (TRAIN_MODULES["rerank"],),
    (TRAIN_MODULES["prerank"],),
)


@dataclass
class ConsoleStack:
    stack: Stack
    url: str
    dataset: str


def _bundle(root: Path) -> tuple[Path, Path, str, str]:
    """(artifacts, data dir, dataset, bundle): the repository's ml-100k bundle when it has a
    prerank component, else a small synthetic one trained into `root`."""
    artifacts, data = REPO / "artifacts", REPO / "data"
    if stack.bundle_dataset(artifacts) == "ml-100k" and stack.prerank_available(artifacts):
        if (data / "ml-100k" / "items.parquet").exists():
            return artifacts, data, "ml-100k", "current"
    artifacts, data = root / "artifacts", root / "data"
    run = [sys.executable, "-m", "app.cli", "data", "--source", "synthetic", "--users", "200"]
    run += ["--items", "100", "--impressions-per-user", "30", "--data-dir", str(data)]
    subprocess.run(run, check=True, capture_output=True)
    common = ["--dataset", "synthetic", "--data-dir", str(data), "--artifacts", str(artifacts)]
    for module, *options in TRAINERS:
        command = [sys.executable, "-m", module, *common, "--version", "v1", *options]
        subprocess.run(command, check=True, capture_output=True)
    return artifacts, data, "synthetic", "v1"


@pytest.fixture(scope="package")
def console_stack(tmp_path_factory) -> Iterator[ConsoleStack]:
    root = tmp_path_factory.mktemp("console")
    artifacts, data, dataset, bundle = _bundle(root)
    simulation = root / "simulation"
    simulation.mkdir()
    shutil.copy(REPO / "results" / "loop" / "simulation.json", simulation)
    run_dir = root / "run"
    options = {"artifacts": artifacts, "data_dir": data, "dataset": dataset, "bundle": bundle}
    # A generous deadline (10 s for the console and the tests' clients alike): on a loaded
    # machine a recall channel past a 2 s budget's share is cut, and the page would change with
    # the machine's load instead of with what the test does.
    gateway_env = {
        "CASCADE_GATEWAY_EXPLAIN_TOKEN": EXPLAIN_TOKEN,
        "CASCADE_GATEWAY_MAX_DEADLINE_S": "10",
        # The page depends on the request's time (recall's fresh channel draws are seeded by it,
        # to the second): the tests compare pages at one time they send.
        "CASCADE_GATEWAY_CLOCK": "caller",
    }
    with stack.running_stack(run_dir, train=False, extra_env=gateway_env, **options) as running:
        env = {
            "CASCADE_CONSOLE_EXPLAIN_TOKEN": EXPLAIN_TOKEN,
            "CASCADE_CONSOLE_DATA_DIR": str(data),
            "CASCADE_CONSOLE_ARTIFACTS": str(artifacts),
            "CASCADE_CONSOLE_BUNDLE": bundle,
            "CASCADE_CONSOLE_SIMULATION_DIR": str(simulation),
            "CASCADE_CONSOLE_WINDOW_S": "3600",  # the whole test run is inside the window
            "CASCADE_CONSOLE_SCRAPE_EVERY_S": "1",
            "CASCADE_CONSOLE_TIMEOUT_S": "10",
        }
        console = launch.start(run_dir, port=0, env=env)
        try:
            yield ConsoleStack(running, console.url, dataset)
        finally:
            launch.stop(run_dir)


@pytest.fixture(scope="package")
def browser() -> Iterator:
    """Headless Chromium through Debian's chromedriver (`make system-packages` installs both)."""
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium")
    if driver_path is None or chromium is None:
        message = "chromium and chromium-driver are not installed: `make system-packages`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()
