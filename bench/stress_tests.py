"""The test suite under stress: N full runs in a row while a CPU-heavy process spins beside them.

    python -m bench.stress_tests --runs 20 [--random-order] [--out results/tests]

Each run is a fresh `python -m pytest`; the busy process (a pure-Python loop, one core) runs for
the whole time. Writes stress.json (per run: exit code, wall seconds, the pytest summary line) and
prints the pass count. A suite that depends on timing luck or on test order fails here first.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

SPIN = "while True:\n    pass\n"


def run_suite(extra: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        # The project's addopts already say -q (a second -q would hide the summary line); -rfE
        # lists what failed or errored, so a red run names its tests.
        [sys.executable, "-m", "pytest", "-rfEs", "-p", "no:cacheprovider", *extra],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = next(  # pytest's last line: "590 passed, 4 skipped in 700.1s (0:11:40)"
        (line for line in reversed(lines) if re.search(r"\d+ (passed|failed|error)", line)), ""
    )
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    # A red run keeps the end of its output (the tracebacks), or nobody can tell why it failed.
    tail = [] if done.returncode == 0 else (done.stdout + done.stderr).splitlines()[-80:]
    return {
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary.strip("= "),
        "failed": failed,
        "output_tail": tail,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--random-order", action="store_true", help="shuffle tests each run")
    parser.add_argument("--out", type=Path, default=Path("results/tests"))
    args = parser.parse_args(argv)
    # pytest-random-order: modules in a random order, and tests shuffled within each module.
    extra = ["--random-order-bucket=module"] if args.random_order else []
    hog = subprocess.Popen([sys.executable, "-c", SPIN])
    runs = []
    try:
        for index in range(args.runs):
            result = run_suite(extra)
            runs.append(result)
            print(
                f"run {index + 1}/{args.runs}: rc {result['returncode']} in "
                f"{result['seconds']} s  {result['summary']}",
                flush=True,
            )
            for line in result["failed"]:
                print(f"    {line}", flush=True)
    finally:
        hog.kill()
        hog.wait()
    passed = sum(r["returncode"] == 0 for r in runs)
    report = {
        "runs": runs,
        "passed": passed,
        "total": len(runs),
        "cpu_hog": "1 busy process",
        "random_order": args.random_order,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "stress_random.json" if args.random_order else "stress.json"
    (args.out / name).write_text(json.dumps(report, indent=2))
    print(f"passed {passed}/{len(runs)} runs; wrote {args.out / name}")
    return 0 if passed == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
