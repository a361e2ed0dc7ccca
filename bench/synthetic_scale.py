"""How the synthetic world scales: wall time, peak memory and rows per table, one process a size.

    python -m bench.synthetic_scale --out results/bench --sizes 100000 1000000

A size n means n users and n items. Each size runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cascade.data import schema
from cascade.data.synthetic import SyntheticConfig, generate

TABLES = ("users", "items", "creators", "follows", "impressions", "interactions")


def measure(size: int, seed: int, save: bool) -> dict:
    """Generates one world in this process and reports what it cost."""
    start = time.perf_counter()
    dataset = generate(SyntheticConfig(n_users=size, n_items=size, seed=seed))
    wall_s = time.perf_counter() - start
    result = {
        "size": size,
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "rows": {name: len(next(iter(dataset.table(name).values()))) for name in TABLES},
        "click_rate": round(float(dataset.impressions["click"].mean()), 4),
    }
    if save:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            schema.save(dataset, Path(folder))
            result["save_s"] = round(time.perf_counter() - start, 1)
    # ru_maxrss is KiB on Linux.
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def run_in_child(size: int, seed: int, save: bool) -> dict:
    command = [sys.executable, "-m", "bench.synthetic_scale", "--single", str(size)]
    command += ["--seed", str(seed)] + (["--save"] if save else [])
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    header = f"{'size':>9} {'wall_s':>7} {'save_s':>7} {'peak_GiB':>8} " + " ".join(
        f"{name:>12}" for name in TABLES
    )
    lines = [header]
    for r in results:
        rows = " ".join(f"{r['rows'][name]:>12,}" for name in TABLES)
        save_s = f"{r['save_s']:>7}" if "save_s" in r else f"{'-':>7}"
        lines.append(f"{r['size']:>9,} {r['wall_s']:>7} {save_s} {r['peak_rss_gib']:>8} {rows}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", action="store_true", help="also time writing parquet")
    parser.add_argument("--single", type=int, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(measure(args.single, args.seed, args.save)))
        return
    results = [run_in_child(size, args.seed, args.save) for size in args.sizes]
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "synthetic_scale",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
    }
    path = args.out / "synthetic_scale.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
