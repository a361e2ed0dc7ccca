"""Two builds of the gateway side by side against one set of stages: CPU per request of each.

    python -m bench.gateway_ab --old 7761304 --out results/cascade [--rounds 4] [--seconds 10]

A whole-stack CPU figure moves by more than a gateway change between two runs minutes apart on a
shared machine. Here one stack runs (admission off: the full funnel) and a second gateway process
runs the `--old` commit's code (`git archive` into a scratch folder) against the same stage
processes, with its own event log. Rounds alternate between the two gateways (which goes first
alternates too): a closed loop of --workers for --seconds against one of them while the CPU time
of every process is read before and after. The report gives each gateway's CPU per answered
request per round, the medians, and the median of the per-round ratios new / old; the stages'
CPU per request under each gateway is there as a check that they did the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app import stack
from bench.load import closed_loop, cpu_seconds
from cascade.server import read_port_file


def old_tree(rev: str, folder: Path) -> Path:
    """The code of commit `rev` in `folder` (tracked files only: artifacts and data are passed
    to its gateway as absolute paths)."""
    archive = subprocess.run(["git", "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def start_old_gateway(running: stack.Stack, tree: Path, run_dir: Path) -> tuple[int, str]:
    """The old code's gateway on a free port, the stack gateway's settings otherwise; returns
    its pid and address once it serves."""
    run_dir = run_dir.resolve()  # its working folder is the old tree
    port_file = run_dir / "gateway-old.ports.json"
    port_file.unlink(missing_ok=True)
    env = os.environ | running.environments["gateway"]
    env |= {
        "CASCADE_GATEWAY_SERVER_PORT": "0",
        "CASCADE_GATEWAY_SERVER_METRICS_PORT": "0",
        "CASCADE_GATEWAY_SERVER_PORT_FILE": str(port_file),
        "CASCADE_GATEWAY_EVENT_LOG": f"file:{run_dir / 'eventlog-old'}",
        "PYTHONPATH": str(tree),  # its modules before the installed (new) ones
    }
    with open(run_dir / "gateway-old.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.server"],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while (ports := read_port_file(port_file)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the old gateway did not start: see {run_dir}/gateway-old.log")
        time.sleep(0.1)
    return process.pid, f"127.0.0.1:{ports[0]}"


def process_cpu(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def one_round(running, gateways: dict, name: str, users, args) -> dict:
    """A closed loop against gateway `name`: CPU ms per answered request of every process."""
    pid, target = gateways[name]
    before = cpu_seconds(running) | {"gateway": process_cpu(pid)}
    samples, seconds = asyncio.run(
        closed_loop(target, users, args.workers, args.seconds, args.timeout)
    )
    after = cpu_seconds(running) | {"gateway": process_cpu(pid)}
    ok = sum(s.code == "OK" for s in samples)
    cpu = {n: round(1e3 * (after[n] - before[n]) / max(ok, 1), 3) for n in after}
    return {"gateway": name, "answers": ok, "rps": round(ok / seconds, 1), "cpu_ms": cpu}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="HEAD", help="the commit whose gateway is compared")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/gateway-ab"))
    parser.add_argument("--rounds", type=int, default=4, help="rounds per gateway")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("results/cascade"))
    args = parser.parse_args(argv)
    from cascade.data import load_dataset

    users = np.random.default_rng(0).permutation(
        load_dataset(args.dataset, args.data_dir).users["user_id"]
    )
    env = {"CASCADE_GATEWAY_ADMISSION_ENABLED": "false"}  # the full funnel in both
    where = {"artifacts": args.artifacts, "data_dir": args.data_dir, "dataset": args.dataset}
    rounds, load_start = [], round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="cascade-old-gateway-") as scratch:
        tree = old_tree(args.old, Path(scratch))
        with stack.running_stack(args.run_dir, extra_env=env, **where) as running:
            new = next(s for s in running.services if s.name == "gateway")
            old_pid, old_target = start_old_gateway(running, tree, args.run_dir)
            gateways = {"new": (new.pid, new.address), "old": (old_pid, old_target)}
            try:
                for name in gateways:  # warm-up
                    pid, target = gateways[name]
                    asyncio.run(closed_loop(target, users[:50], 4, 3.0, args.timeout))
                for r in range(args.rounds):
                    for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                        row = one_round(running, gateways, name, users, args)
                        print(json.dumps(row), flush=True)
                        rounds.append(row)
            finally:
                os.killpg(old_pid, 15)
    report = summary(rounds, args)
    report["load_average"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_ab.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=2))
    print(f"saved {args.out}/gateway_ab.json")
    return 0


def summary(rounds: list[dict], args) -> dict:
    def of(name: str, process: str) -> list[float]:
        return [r["cpu_ms"][process] for r in rounds if r["gateway"] == name]

    processes = list(rounds[0]["cpu_ms"])
    old, new = np.array(of("old", "gateway")), np.array(of("new", "gateway"))
    return {
        "old": args.old,
        "machine_note": "2 shared cores, other work running; old and new alternate each round",
        "workers": args.workers,
        "seconds_per_round": args.seconds,
        "median_cpu_ms_per_request": {
            name: {p: round(float(np.median(of(name, p))), 3) for p in processes}
            for name in ("old", "new")
        },
        "gateway_new_over_old": round(float(np.median(new / old)), 3),
        "rounds": rounds,
    }


if __name__ == "__main__":
    sys.exit(main())
