"""How `cascade data import` scales: rows/s and peak memory on generated CSV files.

    python -m bench.import_scale --out results/data --rows 1000000 10000000

Each size writes a CSV of string user / item ids, an event column and Unix times (users = rows /
100, items = rows / 200, Zipf-like item popularity, seeded), then imports it in a fresh process
so the peak RSS is the import's own: read (streamed), map ids, check, sample impressions, write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from cascade.data.assemble import import_dataset
from cascade.data.mapping import load_mapping

MAPPING = """\
[interactions]
file = "events.csv"
user = "user"
item = "item"
time = "ts"
event = "event"
events = { play = "play", complete = "complete", like = "like" }

[options]
negatives_per_positive = {negatives}
"""
CHUNK = 1_000_000


def write_csv(folder: Path, rows: int, seed: int) -> Path:
    """events.csv with `rows` rows, written a chunk at a time (bounded memory here too)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 100, 10), max(rows // 200, 10)
    path = folder / "events.csv"
    with pacsv.CSVWriter(
        path,
        pa.schema(
            [(c, pa.string()) for c in ("user", "item")]
            + [("event", pa.string()), ("ts", pa.int64())]
        ),
    ) as writer:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            users = rng.integers(1, n_users + 1, n)
            items = np.minimum((rng.pareto(1.2, n) * n_items / 50).astype(np.int64) + 1, n_items)
            events = rng.choice(np.array(["play", "complete", "like"]), n, p=[0.7, 0.2, 0.1])
            ts = 1_767_225_600 + rng.integers(0, 90 * 86_400, n)
            batch = pa.table(
                {
                    "user": pa.array(np.char.add("user-", users.astype(str))),
                    "item": pa.array(np.char.add("item-", items.astype(str))),
                    "event": pa.array(events),
                    "ts": pa.array(ts),
                }
            )
            writer.write_table(batch)
    return path


def measure(folder: Path, negatives: int) -> dict:
    """Imports folder/events.csv in this process and reports what it cost."""
    (folder / "mapping.toml").write_text(MAPPING.replace("{negatives}", str(negatives)))
    start = time.perf_counter()
    dataset, report = import_dataset(
        "bench", load_mapping(folder / "mapping.toml"), folder / "data", progress=False
    )
    wall_s = time.perf_counter() - start
    rows = int(sum(report.dropped.values())) + len(dataset.interactions["user_id"])
    return {
        "rows": rows,
        "interactions": len(dataset.interactions["user_id"]),
        "dropped": dict(report.dropped),
        "users": len(dataset.users["user_id"]),
        "items": len(dataset.items["item_id"]),
        "impressions": len(dataset.impressions["user_id"]),
        "wall_s": round(wall_s, 1),
        "rows_per_s": round(rows / wall_s),
        # ru_maxrss is KiB on Linux.
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def run_size(rows: int, seed: int, negatives: int, scratch: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"import-{rows}-", dir=scratch))
    try:
        start = time.perf_counter()
        path = write_csv(folder, rows, seed)
        written_s = time.perf_counter() - start
        command = [sys.executable, "-m", "bench.import_scale", "--single", str(folder)]
        command += ["--negatives", str(negatives)]
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["csv_mib"] = round(path.stat().st_size / 2**20)
        result["generate_csv_s"] = round(written_s, 1)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def markdown(results: list[dict], negatives: int) -> str:
    lines = [
        "# `cascade data import` at scale",
        "",
        "Generated CSV (string user / item ids, event column, Unix times), imported end to end "
        f"(streamed read, id mapping, checks, {negatives} sampled impression(s) per interaction, "
        "parquet write), one fresh process per size. Command: "
        "`python -m bench.import_scale --out results/data --rows 1000000 10000000`. "
        "The machine (2 cores) was shared with other jobs, so times are indicative.",
        "",
        "| rows | CSV MiB | users | items | wall s | rows/s | peak RSS GiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['csv_mib']:,} | {r['users']:,} | {r['items']:,} | "
            f"{r['wall_s']} | {r['rows_per_s']:,} | {r['peak_rss_gib']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/data"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", type=int, default=1, help="impressions per interaction")
    parser.add_argument("--scratch", type=Path, default=None, help="where the CSVs go (tmp)")
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(measure(args.single, args.negatives)))
        return
    results = []
    for rows in args.rows:
        results.append(run_size(rows, args.seed, args.negatives, args.scratch))
        print(json.dumps(results[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "import_scale",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "shared": True},
        "negatives_per_positive": args.negatives,
        "results": results,
    }
    (args.out / "import_scale.json").write_text(json.dumps(report, indent=2))
    (args.out / "import_scale.md").write_text(markdown(results, args.negatives))
    print(markdown(results, args.negatives))
    print(f"wrote {args.out / 'import_scale.json'}")


if __name__ == "__main__":
    main()
