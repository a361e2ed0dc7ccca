"""A screenshot of every console page (`make console-screenshots`, after `make demo`): starts the
local stack on free ports with the console beside it, sends a little traffic, and saves each
page as seen by headless Chromium under results/console/.

    python -m app.console.screenshots [--data-dir data] [--artifacts artifacts] \
        [--out results/console]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import stack
from app.console import launch

PAGES = (
    ("explain", "explain?user=196&count=10"),
    ("item", "item?id=50"),
    ("stack", "stack"),
    ("experiments", "experiments"),
)


def headless_chromium(width: int = 1400, height: int = 1000) -> Any:
    """Debian's chromium through its chromedriver (`make system-packages`); RuntimeError naming
    the missing package otherwise."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if driver_path is None or chromium is None:
        raise RuntimeError("chromium and chromium-driver are not installed: make system-packages")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--simulation-dir", type=Path, default=Path("results/loop"))
    parser.add_argument("--out", type=Path, default=Path("results/console"))
    args = parser.parse_args(argv)
    from gateway.client import CascadeClient

    token = secrets.token_urlsafe(24)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="console-") as run_dir:
        options = {"artifacts": args.artifacts, "data_dir": args.data_dir, "train": False}
        gateway_env = {"CASCADE_GATEWAY_EXPLAIN_TOKEN": token}
        with stack.running_stack(Path(run_dir), extra_env=gateway_env, **options) as running:
            env = {
                "CASCADE_CONSOLE_EXPLAIN_TOKEN": token,
                "CASCADE_CONSOLE_DATA_DIR": str(args.data_dir),
                "CASCADE_CONSOLE_ARTIFACTS": str(args.artifacts),
                "CASCADE_CONSOLE_SIMULATION_DIR": str(args.simulation_dir),
                "CASCADE_CONSOLE_SCRAPE_EVERY_S": "1",
            }
            console = launch.start(Path(run_dir), port=0, env=env)
            try:
                with CascadeClient(running.address(), timeout_s=10) as client:
                    for user in range(1, 200):  # traffic for the stack page's figures
                        client.recommend(user, count=10)
                    client.feedback([(196, 50, "play")])
                driver = headless_chromium()
                try:
                    for name, path in PAGES:
                        driver.set_window_size(1400, 600)  # the page's own height, measured
                        driver.get(console.url + path)
                        height = driver.execute_script(
                            "return document.documentElement.scrollHeight"
                        )
                        driver.set_window_size(1400, min(max(int(height) + 200, 600), 2600))
                        driver.save_screenshot(str(args.out / f"{name}.png"))
                        print(f"{args.out / name}.png", flush=True)
                finally:
                    driver.quit()
            finally:
                launch.stop(Path(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
