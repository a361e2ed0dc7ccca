"""Proves deploy/prometheus and deploy/grafana against a real Prometheus scraping a real stack.

promtool checks the configs and rules and runs the rule unit tests; then the local stack starts on
free ports (or a running one is used), Prometheus starts on a free 127.0.0.1 port scraping it every
second, traffic with faults runs (deploy/check_traffic.py), and every recording rule and every
Grafana panel query is asked over the HTTP API. Any query without data, a rule that fails to
evaluate or a promtool failure exits 1. Debian's `prometheus` package is installed when missing.

    python -m deploy.check_prometheus [--out results/ops] [--running .cascade] [--traffic-s 12]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import yaml

from app.stack import STATE_FILE, Service, Stack, StackError, running_stack
from cascade.server import free_port
from deploy import grafana_dashboards, prometheus_rules
from deploy.check_traffic import Traffic
from deploy.report_prometheus import write_report

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
LOCAL_CONFIG = PROMETHEUS_DIR / "prometheus-local.yml"
CONFIGS = (LOCAL_CONFIG, PROMETHEUS_DIR / "prometheus-compose.yml")


class CheckError(RuntimeError):
    pass


def ensure_prometheus() -> tuple[str, str]:
    """Paths of `prometheus` and `promtool`; installs Debian's package when either is missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        if os.geteuid() != 0:
            raise CheckError("prometheus/promtool missing: run `make system-packages`")
        print("== installing Debian's prometheus package", flush=True)
        install = ["apt-get", "install", "-y", "-q", "prometheus"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
            subprocess.run(install, capture_output=True, check=True)
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        raise CheckError("prometheus/promtool still missing after apt-get install")
    return prometheus, promtool


def promtool_checks(promtool: str) -> list[dict]:
    """`check config` of both scrape configs, `check rules`, and the rule unit tests."""
    rules = sorted(str(p.relative_to(ROOT)) for p in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    tests = sorted(str(p.relative_to(ROOT)) for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    configs = [str(p.relative_to(ROOT)) for p in CONFIGS]
    commands = [
        [promtool, "check", "config", *configs],
        [promtool, "check", "rules", *rules],
        [promtool, "test", "rules", *tests],
    ]
    results = []
    for command in commands:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        shown = ["promtool", *command[1:]]
        results.append(
            {
                "command": " ".join(shown),
                "rc": done.returncode,
                "output": (done.stdout + done.stderr).strip(),
            }
        )
    return results


def scrape_config(stack: Stack, workdir: Path) -> Path:
    """prometheus-local.yml pointed at the stack's real metrics ports, scraping every second (a
    paused stage fails its scrapes after 0.5 s: `up == 0`)."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="500ms", evaluation_interval="1s")
    config["rule_files"] = [str(LOCAL_CONFIG.parent / f) for f in config["rule_files"]]
    ports = {s.name: s.metrics_port for s in stack.services}
    job = next(j for j in config["scrape_configs"] if j["job_name"] == prometheus_rules.JOB)
    entries = [e for e in job["static_configs"] if e["labels"]["stage"] in ports]
    for entry in entries:
        entry["targets"] = [f"127.0.0.1:{ports[entry['labels']['stage']]}"]
    job["static_configs"] = entries
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_prometheus(binary: str, config: Path, workdir: Path, exits: ExitStack) -> str:
    """Prometheus on a free loopback port with its own storage; stopped when `exits` closes."""
    address = f"127.0.0.1:{free_port()}"
    log = open(workdir / "prometheus.log", "w")  # closed by `exits`
    exits.callback(log.close)
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={address}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    exits.callback(_stop, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckError(f"prometheus exited:\n{(workdir / 'prometheus.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as answer:
                if answer.status == 200:
                    return address
        except OSError:
            time.sleep(0.2)
    raise CheckError(f"prometheus not ready on {address} after 30 s")


def wait_scraping(address: str, n_targets: int, timeout_s: float = 30.0) -> None:
    """Until every target has been scraped once (Prometheus waits ~5 s before its first scrape)."""
    deadline = time.monotonic() + timeout_s
    while (
        len(api(address, "query", query=f'up{{job="{prometheus_rules.JOB}"}}')["result"])
        < n_targets
    ):
        if time.monotonic() > deadline:
            raise CheckError(f"prometheus scraped fewer than {n_targets} targets in {timeout_s} s")
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def api(address: str, path: str, **params) -> dict | list:
    url = f"http://{address}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise CheckError(f"{path}: {body.get('error')}")
    return body["data"]


def queries() -> list[dict]:
    """Every recording rule (by name) and every panel query of every dashboard."""
    found = [
        {"source": "rule", "name": name, "expr": name} for name in prometheus_rules.recorded_names()
    ]
    for file, board in grafana_dashboards.all_dashboards().items():
        for title, expr in grafana_dashboards.panel_queries(board):
            found.append({"source": "panel", "name": f"{file}: {title}", "expr": expr})
    return found


def run_queries(address: str, pending: list[dict], settle_s: float) -> None:
    """Asks each query until it returns a finite sample or `settle_s` runs out."""
    deadline = time.monotonic() + settle_s
    todo = list(pending)
    while True:
        for query in list(todo):
            result = api(address, "query", query=query["expr"])["result"]
            finite = [r for r in result if math.isfinite(float(r["value"][1]))]
            query.update(series=len(result), finite=len(finite), ok=bool(finite))
            if finite:
                labels = {k: v for k, v in finite[0]["metric"].items() if k != "__name__"}
                query["sample"] = {"labels": labels, "value": float(finite[0]["value"][1])}
                todo.remove(query)
        if not todo or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def rule_health(address: str) -> list[dict]:
    groups = api(address, "rules")["groups"]
    return [
        {
            "group": g["name"],
            "name": r["name"],
            "type": r["type"],
            "health": r["health"],
            "state": r.get("state", ""),
            "last_error": r.get("lastError", ""),
        }
        for g in groups
        for r in g["rules"]
    ]


def start_stack(artifacts: Path, data_dir: Path, workdir: Path, exits: ExitStack) -> Stack:
    """The local stack on free ports; a port another process took in between is retried."""
    options = {"artifacts": artifacts, "data_dir": data_dir, "train": False}
    for attempt in range(3):
        try:
            return exits.enter_context(running_stack(workdir / f"stack{attempt}", **options))
        except StackError as error:
            if "already in use" not in str(error) or attempt == 2:
                raise
            print(f"== a free port was taken meanwhile, starting again: {error}".splitlines()[0])
    raise AssertionError("unreachable")


def load_running(run_dir: Path) -> Stack:
    state = json.loads((run_dir / STATE_FILE).read_text())
    services = [Service(**s) for s in state["services"]]
    return Stack(run_dir, services, state["bundle"], state["dataset"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/ops"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument(
        "--running",
        type=Path,
        default=None,
        help="use the stack recorded in this run dir (`cascade up`: .cascade)",
    )
    parser.add_argument("--traffic-s", type=float, default=12.0, help="traffic before queries")
    parser.add_argument("--settle-s", type=float, default=30.0, help="max wait for data")
    parser.add_argument("--pause-stage", default="rank", help="SIGSTOP it (own stack only)")
    parser.add_argument("--pause-s", type=float, default=2.5)
    args = parser.parse_args(argv)

    prometheus, promtool = ensure_prometheus()
    version = subprocess.run([prometheus, "--version"], capture_output=True, text=True)
    report: dict = {"prometheus_version": (version.stdout or version.stderr).splitlines()[0]}
    report["promtool"] = checks = promtool_checks(promtool)
    for check in checks:
        print(f"== {check['command']}: exit {check['rc']}", flush=True)
    with ExitStack() as exits:
        workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="promcheck-")))
        if args.running:
            stack, own = load_running(args.running), False
        else:
            stack, own = start_stack(args.artifacts, args.data_dir, workdir, exits), True
        report["stack"] = {
            "own": own,
            "bundle": stack.bundle,
            "dataset": stack.dataset,
            "services": {
                s.name: {"port": s.port, "metrics_port": s.metrics_port} for s in stack.services
            },
        }
        address = start_prometheus(prometheus, scrape_config(stack, workdir), workdir, exits)
        report["prometheus"] = {"address": address, "scrape_interval_s": 1}
        print(f"== prometheus on {address}; {stack.describe()}", flush=True)
        wait_scraping(address, len(stack.services))
        traffic = Traffic(stack, n_users=943 if stack.dataset == "ml-100k" else 1000).start()
        try:
            time.sleep(args.traffic_s / 2)
            if own and args.pause_stage and stack.has(args.pause_stage):
                traffic.pause(stack, args.pause_stage, args.pause_s)
            time.sleep(args.traffic_s / 2)
            report["queries"] = pending = queries()
            run_queries(address, pending, args.settle_s)  # traffic goes on: windows stay full
            down = f'min_over_time(up{{job="{prometheus_rules.JOB}"}}[5m]) == 0'
            report["down_seen"] = api(address, "query", query=down)["result"]
            report["rules"] = rule_health(address)
        finally:
            report["traffic"] = traffic.stop().as_dict()
    empty = [q["name"] for q in report["queries"] if not q["ok"]]
    failing = [r["name"] for r in report["rules"] if r["health"] != "ok"]
    report["ok"] = not empty and not failing and all(c["rc"] == 0 for c in checks)
    report["empty"], report["failing_rules"] = empty, failing
    write_report(report, args.out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
