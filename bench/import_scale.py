"""How `cascade data import` scales: rows/s and peak memory against the bare reader (the floor).

    python -m bench.import_scale --out results/data --rows 1000000 10000000 100000000

Each size writes the same generated log as CSV and as Parquet (string user / item ids, an event
column, Unix times; users = rows / 100, items = rows / 200, Zipf-like item popularity, seeded).
For each file, in fresh processes so each peak RSS is its own: the bare reader alone (the import's
own reader and options, reading every value and counting it: the floor), then the
import end to end (read, check, map ids, remove duplicates, write interactions.parquet, then
sample impressions and write them). Then one malformed line is appended to the CSV, and the
import must name its line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cascade.data.assemble import import_dataset
from cascade.data.mapping import load_mapping
from cascade.data.schema import DataError
from cascade.data.tabular import Source, read_ahead

MAPPING = """\
[interactions]
file = "{file}"
user = "user"
item = "item"
time = "ts"
event = "event"
events = {{ play = "play", complete = "complete", like = "like" }}

[options]
negatives_per_positive = {negatives}
"""
CHUNK = 1_000_000
FORMATS = ("csv", "parquet")


def write_files(
    folder: Path, rows: int, seed: int, formats: tuple[str, ...] = FORMATS
) -> dict[str, Path]:
    """events.csv and events.parquet (those in `formats`) with the same `rows` rows, a chunk at
    a time."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 100, 10), max(rows // 200, 10)
    schema = pa.schema(
        [("user", pa.string()), ("item", pa.string()), ("event", pa.string()), ("ts", pa.int64())]
    )
    paths = {kind: folder / f"events.{kind}" for kind in formats}
    with (
        pacsv.CSVWriter(folder / "events.csv", schema) as csv_writer,
        pq.ParquetWriter(folder / "events.parquet", schema) as parquet_writer,
    ):
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            users = rng.integers(1, n_users + 1, n)
            items = np.minimum((rng.pareto(1.2, n) * n_items / 50).astype(np.int64) + 1, n_items)
            events = rng.choice(np.array(["play", "complete", "like"]), n, p=[0.7, 0.2, 0.1])
            ts = 1_767_225_600 + rng.integers(0, 90 * 86_400, n)
            batch = pa.table(
                {
                    "user": pc.binary_join_element_wise(
                        "user", pa.array(users).cast(pa.string()), "-"
                    ),
                    "item": pc.binary_join_element_wise(
                        "item", pa.array(items).cast(pa.string()), "-"
                    ),
                    "event": pa.array(events),
                    "ts": pa.array(ts),
                },
                schema=schema,
            )
            if "csv" in formats:
                csv_writer.write_table(batch)
            if "parquet" in formats:
                parquet_writer.write_table(batch)
    for kind in set(FORMATS) - set(formats):
        (folder / f"events.{kind}").unlink()
    return paths


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux


def bare_read(path: Path) -> dict:
    """The floor: the import's reader (cascade.data.tabular, the same options and batches) over
    the file, every value read (summed lengths and times: a count could come from Parquet's
    statistics)."""
    source = Source.of(path)
    start, cpu = time.perf_counter(), time.process_time()
    rows, total = 0, 0
    for batch in read_ahead(source.batches(["user", "item", "event", "ts"], progress=False)):
        rows += batch.num_rows
        for column in ("user", "item", "event"):
            total += pc.sum(pc.utf8_length(batch[column])).as_py() or 0
        total += pc.sum(pc.cast(batch["ts"], pa.int64())).as_py() or 0
    seconds = time.perf_counter() - start
    cpu_s = round(time.process_time() - cpu, 2)
    return {
        "rows": rows,
        "wall_s": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "cpu_s": cpu_s,
    }


def import_file(path: Path, negatives: int) -> dict:
    """Imports `path` end to end in this process: what it cost, or the error it raised."""
    folder = path.parent
    mapping = folder / f"mapping-{path.suffix[1:]}.toml"
    mapping.write_text(MAPPING.format(file=path.name, negatives=negatives))
    out = folder / "data"
    start, cpu = time.perf_counter(), time.process_time()
    try:
        dataset, report = import_dataset(
            "bench", load_mapping(mapping), out, force=True, progress=False
        )
    except DataError as error:
        wall_s = round(time.perf_counter() - start, 1)
        return {"error": str(error), "wall_s": wall_s, "peak_rss_gib": peak_rss_gib()}
    wall_s = time.perf_counter() - start
    cpu_s = round(time.process_time() - cpu, 2)
    rows = int(sum(report.dropped.values())) + report.interactions
    interactions_s = report.steps["interactions written"]
    result = {
        "rows": rows,
        "interactions": report.interactions,
        "dropped": dict(report.dropped),
        "users": len(dataset.users["user_id"]),
        "items": len(dataset.items["item_id"]),
        "impressions": pq.ParquetFile(out / "bench" / "impressions.parquet").metadata.num_rows,
        "wall_s": round(wall_s, 1),
        "rows_per_s": round(rows / wall_s),
        "cpu_s": cpu_s,
        "interactions_s": interactions_s,
        "interactions_rows_per_s": round(rows / interactions_s),
        "steps": report.steps,
        "peak_rss_gib": peak_rss_gib(),
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def child(mode: str, path: Path, negatives: int) -> dict:
    """Runs one measurement in a fresh process (its own peak RSS), with the load around it."""
    command = [sys.executable, "-m", "bench.import_scale", f"--{mode}", str(path)]
    command += ["--negatives", str(negatives)]
    load_before = os.getloadavg()[0]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["load_1m"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    return result


def run_size(
    rows: int,
    seed: int,
    negatives: int,
    scratch: Path | None,
    formats: tuple[str, ...],
    save: Callable[[list[dict]], None],
) -> list[dict]:
    """Each format's malformed-line check (CSV), floor and import; `save` gets the results after
    each measurement (at 100M rows one import takes long: what was measured is kept)."""
    folder = Path(tempfile.mkdtemp(prefix=f"import-{rows}-", dir=scratch))
    results: list[dict] = []
    try:
        start = time.perf_counter()
        paths = write_files(folder, rows, seed, formats)
        generated_s = round(time.perf_counter() - start, 1)
        for kind in formats:
            size = paths[kind].stat().st_size
            result = {"format": kind, "rows": rows, "file_mib": round(size / 2**20)}
            result["generate_s"] = generated_s
            results.append(result)
            if kind == "csv":
                result["malformed"] = malformed_check(paths[kind], rows, negatives)
                save(results)
            floor = child("bare", paths[kind], negatives)
            result["floor_rows_per_s"] = floor["rows_per_s"]
            result["floor_load_1m"] = floor["load_1m"]
            result["floor_cpu_s"] = floor["cpu_s"]
            save(results)
            result.update(child("single", paths[kind], negatives))
            result["ratio_to_floor"] = round(result["rows_per_s"] / floor["rows_per_s"], 3)
            result["cpu_ratio_to_floor"] = round(floor["cpu_s"] / result["cpu_s"], 3)
            result["interactions_ratio_to_floor"] = round(
                result["interactions_rows_per_s"] / floor["rows_per_s"], 3
            )
            save(results)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def malformed_check(path: Path, rows: int, negatives: int) -> dict:
    """Appends a line with one field too many; the import must fail naming that line. The file
    is then cut back to what it was."""
    line = rows + 2  # the header is line 1
    size = path.stat().st_size
    with path.open("a") as handle:
        handle.write("user-1,item-1,play,1767225600,extra\n")
    answer = child("single", path, negatives)
    with path.open("r+b") as handle:
        handle.truncate(size)
    expected = f"{path} line {line}: expected 4 fields"
    return {
        "line": line,
        "error": answer.get("error", ""),
        "named": answer.get("error", "").startswith(expected),
        "wall_s": answer["wall_s"],
        "peak_rss_gib": answer["peak_rss_gib"],
    }


def markdown(results: list[dict], negatives: int, command: str) -> str:
    lines = [
        "# `cascade data import` at scale",
        "",
        "Generated log (string user / item ids, event column, Unix times) as CSV and as Parquet, "
        "imported end to end, each in a fresh process: read, checked, ids mapped, duplicates "
        "removed and interactions.parquet written (`interactions`: rows/s up to "
        f"that point), then {negatives} sampled impression(s) per interaction written (`all`: "
        "rows/s of the whole import). The floor is the bare reader (the import's own reader, "
        "pyarrow's, every value read) over the same file in the same run; `load` is the 1-minute "
        "load average before / after (2 cores, shared with other jobs). `CPU s` is the process's "
        "CPU time (every thread, user and system), which the load inflates far less than wall "
        "time: its ratio (floor / import) is the share of the import's work that is the reader's. "
        f"Commands: `{command}`.",
        "",
        "| rows | format | file MiB | users | items | interactions s | interactions rows/s | "
        "all s | all rows/s | floor rows/s | ratio to floor (interactions / all) | "
        "CPU s import / floor (ratio) | peak RSS GiB | load | malformed line named (s, peak RSS) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for r in results:
        malformed = r.get("malformed")
        named = "—"
        if malformed:
            named = f"{'yes' if malformed['named'] else 'NO'} (line {malformed['line']:,}, "
            named += f"{malformed['wall_s']} s, {malformed.get('peak_rss_gib', '—')} GiB)"
        cell = {k: "—" for k in ("users", "items", "interactions_s", "wall_s", "peak_rss_gib")}
        cell |= {k: "—" for k in ("interactions_rows_per_s", "rows_per_s", "floor_rows_per_s")}
        cell |= {k: f"{v:,}" if isinstance(v, int) else str(v) for k, v in r.items()}
        ratios = "—"
        if "ratio_to_floor" in r:
            ratios = f"{r['interactions_ratio_to_floor']} / {r['ratio_to_floor']}"
        load = f"{r['load_1m'][0]} / {r['load_1m'][1]}" if "load_1m" in r else "—"
        cpu = "—"
        if "cpu_ratio_to_floor" in r:
            cpu = f"{r['cpu_s']} / {r['floor_cpu_s']} ({r['cpu_ratio_to_floor']})"
        lines.append(
            f"| {cell['rows']} | {r['format']} | {cell['file_mib']} | {cell['users']} | "
            f"{cell['items']} | {cell['interactions_s']} | {cell['interactions_rows_per_s']} | "
            f"{cell['wall_s']} | {cell['rows_per_s']} | {cell['floor_rows_per_s']} | {ratios} | "
            f"{cpu} | {cell['peak_rss_gib']} | {load} | {named} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/data"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", type=int, default=1, help="impressions per interaction")
    parser.add_argument("--scratch", type=Path, default=None, help="where the files go (tmp)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)  # child: import a file
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)  # child: the floor
    args = parser.parse_args()
    if args.single is not None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        print(json.dumps(import_file(args.single, args.negatives)))
        return
    if args.bare is not None:
        print(json.dumps(bare_read(args.bare)))
        return
    command = "python -m bench.import_scale --rows " + " ".join(map(str, args.rows))
    if tuple(args.formats) != FORMATS:
        command += " --formats " + " ".join(args.formats)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "import_scale.json"
    ours: list[dict] = []

    def save(measured: list[dict]) -> None:
        # Sizes measured by another run stay (a 100M-row run takes long, and may run beside
        # a shorter one): the file is read again now, and this run's sizes and formats replace
        # theirs.
        earlier = json.loads(path.read_text()) if path.exists() else {"results": []}
        commands = [c for c in earlier.get("commands", []) if c != command] + [command]
        replaced = {(rows, kind) for rows in args.rows for kind in args.formats}
        kept = [r for r in earlier["results"] if (r["rows"], r["format"]) not in replaced]
        results = kept + ours + measured
        results.sort(key=lambda r: (r["rows"], FORMATS.index(r["format"])))
        report = {
            "benchmark": "import_scale",
            "commands": commands,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "shared": True},
            "negatives_per_positive": args.negatives,
            "results": results,
        }
        path.write_text(json.dumps(report, indent=2))
        (args.out / "import_scale.md").write_text(
            markdown(results, args.negatives, "`; `".join(commands))
        )

    for rows in args.rows:
        ours += run_size(rows, args.seed, args.negatives, args.scratch, tuple(args.formats), save)
    print(markdown(ours, args.negatives, command))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
