"""A large synthetic world end to end: generated, trained and served beside the 10k-item world.

    python -m bench.large_world --items 1000000 --users 40000 --impressions-per-user 20 \
        --out results/train

Generates the world (`cascade data`), trains it with the dataset's default profile (`cascade
train all`, resumable: rerun the same command after a crash and the stages already complete are
skipped), and starts it with `cascade up`'s own code on free loopback ports beside the 10k-item
world (the synthetic defaults, or one trained already: `--reference-data` and
`--reference-artifacts`), both serving that same profile. Then, in alternating rounds so machine
noise falls on both alike: one request at a time, and at saturation (`--workers` closed loop); each
world's p50/p99 and CPU per request (its five services), and the large world's over
the 10k world's. A world already generated or trained under `--work-dir` is reused. Below a
million items the report is written as large_world_small.{json,md}: a rehearsal, never the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from app import stack
from app.train_all import TRAINING
from bench.load import Sample, closed_loop, cpu_seconds, summarize
from cascade.artifacts import MANIFEST
from cascade.data.synthetic import SyntheticConfig
from cascade.profiles import default_profile
from cascade.topology import TRAIN_ORDER

DATASET = "synthetic"  # both worlds are the synthetic world: served with its default profile
VERSION = "v1"
MILLION = 1_000_000
GOALS = {"p50_ratio": 1.3, "p99_ratio": 1.3, "cpu_ratio": 1.5}
GIB = 2**30


@dataclass(frozen=True)
class World:
    """One synthetic world's size and where its data and bundles live."""

    name: str
    items: int
    users: int
    impressions_per_user: float
    root: Path
    trained: tuple[Path, Path] | None = None  # (data dir, artifacts) of a world trained already

    @property
    def data_dir(self) -> Path:
        return self.trained[0] if self.trained else self.root / "data"

    @property
    def artifacts(self) -> Path:
        return self.trained[1] if self.trained else self.root / "artifacts"


def run_measured(command: list[str], log: Path) -> dict:
    """Runs a command to completion; its wall seconds and peak RSS (the kernel's own account of
    the process tree's largest member). Exits naming the log when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}): see {log}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 2),  # ru_maxrss: KiB on Linux
    }


def cascade(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *arguments]


def generate(world: World) -> dict:
    """The world's data (reused when the same sizes are there already) and what generating cost."""
    record = world.root / "generation.json"
    wanted = {"items": world.items, "users": world.users, "ipu": world.impressions_per_user}
    if record.exists() and json.loads(record.read_text()).get("sizes") == wanted:
        return json.loads(record.read_text())
    command = cascade("data", "--source", DATASET, "--data-dir", str(world.data_dir))
    command += ["--items", str(world.items), "--users", str(world.users)]
    command += ["--impressions-per-user", str(world.impressions_per_user)]
    result = {"sizes": wanted, **run_measured(command, world.root / "generation.log")}
    record.write_text(json.dumps(result, indent=2))
    return result


def train(world: World) -> dict:
    """`cascade train all` (resumes a run that stopped); each stage's seconds and peak RSS."""
    command = cascade("train", "all", "--dataset", DATASET, "--data-dir", str(world.data_dir))
    command += ["--artifacts", str(world.artifacts), "--version", VERSION]
    total = run_measured(command, world.root / "train.log")
    # Its peak is not the run's: each stage resets the kernel's high-water mark (app/train_all.py).
    del total["peak_rss_gib"]
    manifest = json.loads((world.artifacts / VERSION / MANIFEST).read_text())
    stages = {
        stage: {
            "seconds": record["seconds"],
            "cpu_seconds": record.get("cpu_seconds"),
            "peak_rss_gib": round(record["peak_rss_bytes"] / GIB, 2),
        }
        for stage, record in sorted(
            manifest[TRAINING].items(), key=lambda item: TRAIN_ORDER.index(item[0])
        )
    }
    bundle_bytes = sum(f["bytes"] for f in manifest["files"].values())
    return {
        "stages": stages,
        "seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "this_run": total,  # a rerun that finds every stage complete only checks and publishes
        "bundle_gib": round(bundle_bytes / GIB, 2),
    }


def reused(world: World) -> dict:
    """A world trained elsewhere: which bundle serves it, and its training records if it has
    them (`cascade train all` writes them; a bundle from `cascade train` has none)."""
    manifest = json.loads((world.artifacts / "current" / MANIFEST).read_text())
    stages = {
        stage: {
            "seconds": record["seconds"],
            "cpu_seconds": record.get("cpu_seconds"),
            "peak_rss_gib": round(record["peak_rss_bytes"] / GIB, 2),
        }
        for stage, record in manifest.get(TRAINING, {}).items()
    }
    bundle_bytes = sum(f["bytes"] for f in manifest["files"].values())
    return {
        "reused_bundle": f"{world.artifacts}/current (version {manifest['version']})",
        "stages": stages,
        "bundle_gib": round(bundle_bytes / GIB, 2),
    }


def world_rows(world: World) -> dict[str, int]:
    """Rows per table, from the Parquet footers (the 1M world's tables need not be loaded)."""
    tables = ("users", "items", "creators", "follows", "impressions", "interactions")
    folder = world.data_dir / DATASET
    return {t: pq.ParquetFile(folder / f"{t}.parquet").metadata.num_rows for t in tables}


def user_ids(world: World) -> np.ndarray:
    """The world's user ids in a seeded order: the requests' users."""
    path = world.data_dir / DATASET / "users.parquet"
    ids = pq.read_table(path, columns=["user_id"])["user_id"].to_numpy()
    return np.random.default_rng(0).permutation(ids)


def peak_rss_gib(running: stack.Stack) -> dict[str, float]:
    """Each service's peak resident memory so far (the kernel's high-water mark)."""
    peaks = {}
    for service in running.services:
        for line in Path(f"/proc/{service.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[service.name] = round(int(line.split()[1]) * 1024 / GIB, 2)
    return peaks


def recall_channels_ms(running: stack.Stack) -> dict[str, float]:
    """Each recall channel's mean latency so far (recall's own histogram, Prometheus text)."""
    (recall,) = [s for s in running.services if s.name == "recall"]
    url = f"http://127.0.0.1:{recall.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    series = "cascade_recall_channel_latency_seconds"
    found = {
        (kind, channel): float(value)
        for kind, channel, value in re.findall(
            rf'{series}_(sum|count)\{{channel="(\w+)"\}} (\S+)', text
        )
    }
    return {
        channel: round(1e3 * total / max(found.get(("count", channel), 0.0), 1.0), 2)
        for (kind, channel), total in found.items()
        if kind == "sum"
    }


def measure(running: stack.Stack, users: np.ndarray, workers: int, seconds: float) -> tuple:
    """Closed loop with `workers` callers; the samples, the seconds and the services' CPU."""
    before = cpu_seconds(running)
    samples, took = asyncio.run(closed_loop(running.address("gateway"), users, workers, seconds, 5))
    after = cpu_seconds(running)
    cpu = sum(after[name] - before[name] for name in after if name != "load generator")
    return samples, took, cpu


def serve(worlds: dict[str, World], args: argparse.Namespace) -> dict:
    """Both worlds up at once; rounds alternate between them, one at a time then saturated."""
    report: dict = {name: {} for name in worlds}
    samples: dict[tuple[str, str], list[Sample]] = {}
    totals: dict[tuple[str, str], list[float]] = {}  # seconds, CPU seconds
    with ExitStack() as stacks:
        running, users = {}, {}
        for name, world in worlds.items():
            started = time.perf_counter()
            running[name] = stacks.enter_context(
                stack.running_stack(
                    world.root / "run",
                    artifacts=world.artifacts,
                    data_dir=world.data_dir,
                    dataset=DATASET,
                    train=False,
                    timeout_s=args.start_timeout,
                )
            )
            report[name]["start_seconds"] = round(time.perf_counter() - started, 1)
            users[name] = user_ids(world)
            measure(running[name], users[name][:50], 4, 3.0)  # warm: connections, caches
        for _ in range(args.rounds):
            for mode, workers in (("one_at_a_time", 1), ("saturation", args.workers)):
                for name in worlds:
                    got, took, cpu = measure(running[name], users[name], workers, args.seconds)
                    samples.setdefault((name, mode), []).extend(got)
                    spent = totals.setdefault((name, mode), [0.0, 0.0])
                    spent[0] += took
                    spent[1] += cpu
        for name in worlds:
            report[name]["service_peak_rss_gib"] = peak_rss_gib(running[name])
            report[name]["recall_channel_mean_ms"] = recall_channels_ms(running[name])
    for (name, mode), got in samples.items():
        took, cpu = totals[(name, mode)]
        row = summarize(got, took)
        # Each stage's own latency (the answer's trace): which one the catalogue's size slows.
        row["stages"] = {
            stage: {k: v for k, v in p.items() if k in ("p50_ms", "p99_ms")}
            for stage, p in row["stages"].items()
        }
        # Per answered request: a request the gateway sheds (RESOURCE_EXHAUSTED) costs little.
        answered = sum(s.code == "OK" for s in got)
        row["cpu_ms_per_request"] = round(1e3 * cpu / max(answered, 1), 2)
        report[name][mode] = row
    return report


def ratios(served: dict, large: str, reference: str) -> dict:
    out = {}
    for mode in ("one_at_a_time", "saturation"):
        a, b = served[large][mode], served[reference][mode]
        out[mode] = {
            "p50_ratio": round(a["p50_ms"] / b["p50_ms"], 3),
            "p99_ratio": round(a["p99_ms"] / b["p99_ms"], 3),
            "cpu_ratio": round(a["cpu_ms_per_request"] / b["cpu_ms_per_request"], 3),
        }
        out[mode]["met"] = all(out[mode][k] <= limit for k, limit in GOALS.items())
    return out


def markdown(report: dict) -> str:
    large, reference = report["worlds"]["large"], report["worlds"]["reference"]
    lines = [f"# {report['title']}", ""]
    if report["rehearsal"]:
        lines += ["A rehearsal below a million items: it proves the command, not the goal.", ""]
    machine = report["machine"]
    lines += [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpus']} CPUs, 1-minute load average {machine['load_average_start']} "
        f"at the start and {machine.get('load_average_end', '-')} at the end: on a shared machine "
        "wall seconds include waiting for a CPU, CPU seconds do not.",
        "",
        "| world | items | users | impressions/user | impressions | interactions |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("large", "reference"):
        w = report["worlds"][name]
        lines.append(
            f"| {name} | {w['items']:,} | {w['users']:,} | {w['impressions_per_user']} | "
            f"{w['rows']['impressions']:,} | {w['rows']['interactions']:,} |"
        )
    lines += [
        "",
        "| step | wall s | CPU s | peak RSS GiB | 10k world: wall s | CPU s | peak RSS GiB |",
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    keys = ("seconds", "cpu_seconds", "peak_rss_gib")

    def row(label: str, a: dict, b: dict) -> str:
        cells = [a.get(k, "-") for k in keys] + [b.get(k, "-") for k in keys]
        return f"| {label} | " + " | ".join(str(c) for c in cells) + " |"

    lines.append(row("generate", large["generation"], reference["generation"]))
    for stage in TRAIN_ORDER:
        record = large["training"]["stages"][stage]
        lines.append(row(f"train {stage}", record, reference["training"]["stages"].get(stage, {})))
    starts = [w["serving"] for w in (large, reference)]
    lines.append(
        "| start (`cascade up`; peak: largest service) | "
        + " | ".join(
            f"{s['start_seconds']} | - | {max(s['service_peak_rss_gib'].values())}" for s in starts
        )
        + " |"
    )
    lines += ["", f"Bundle: {large['training']['bundle_gib']} GiB (large), "
              f"{reference['training']['bundle_gib']} GiB (10k items).", ""]  # fmt: skip
    if "reused_bundle" in reference["training"]:
        bundle = reference["training"]["reused_bundle"]
        lines += [f"The 10k-item world is a bundle trained earlier: `{bundle}`, data "
                  f"`{reference['data']}`.", ""]  # fmt: skip
    lines += [
        f"Served in {report['rounds']} alternating rounds of {report['seconds_per_round']} s, "
        f"one at a time and at saturation ({report['workers']} callers, closed loop), same "
        f"profile ({report['profile']}), loopback; CPU = the five services' CPU per answer.",
        "",
        "| mode | world | requests | p50 ms | p99 ms | answered/s | CPU ms/answer | shed or failed "
        "| degraded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("one_at_a_time", "saturation"):
        for name in ("large", "reference"):
            r = report["worlds"][name]["serving"][mode]
            codes = ", ".join(f"{n} {c}" for c, n in r["error_codes"].items()) or "0"
            lines.append(
                f"| {mode} | {name} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{r['throughput_rps']} | {r['cpu_ms_per_request']} | {codes} | {r['degraded']} |"
            )
    lines += [
        "",
        "Latency percentiles are over answered requests; degraded answers (a stage past its "
        "deadline, the gateway's fallback) count among them.",
        "",
        "Per stage (each answer's trace), p50 ms, large / 10k world:",
        "",
    ]
    stage_names = list(report["worlds"]["large"]["serving"]["one_at_a_time"].get("stages", {}))
    lines += ["| mode | " + " | ".join(stage_names) + " |"]
    lines += ["|---|" + "---|" * len(stage_names)]
    for mode in ("one_at_a_time", "saturation"):
        cells = []
        for stage in stage_names:
            a, b = (
                report["worlds"][n]["serving"][mode]["stages"].get(stage, {})
                for n in ("large", "reference")
            )
            cells.append(f"{a.get('p50_ms', '-')} / {b.get('p50_ms', '-')}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    channels = report["worlds"]["large"]["serving"].get("recall_channel_mean_ms", {})
    if channels:
        reference_channels = report["worlds"]["reference"]["serving"]["recall_channel_mean_ms"]
        lines += [
            "",
            "Recall's channels, mean ms over the whole run (both modes), large / 10k world:",
        ]
        lines += ["", "| " + " | ".join(channels) + " |", "|" + "---|" * len(channels)]
        cells = [f"{channels[c]} / {reference_channels.get(c, '-')}" for c in channels]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| mode | p50 ratio | p99 ratio | CPU ratio | goals met (<= 1.3, 1.3, 1.5) |"]
    lines += ["|---|---|---|---|---|"]
    for mode, r in report["ratios"].items():
        lines.append(
            f"| {mode} | {r['p50_ratio']} | {r['p99_ratio']} | {r['cpu_ratio']} | {r['met']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=MILLION, help="the large world's catalogue")
    # The sizes docs/large_world.md ran: `cascade train all` well inside 2 hours on 2 cores.
    parser.add_argument("--users", type=int, default=40_000, help="the large world's users")
    parser.add_argument("--impressions-per-user", type=float, default=20.0)
    parser.add_argument(
        "--reference-items", type=int, default=defaults.n_items, help="the 10k-item world's"
    )
    parser.add_argument("--reference-users", type=int, default=defaults.n_users)
    parser.add_argument(
        "--reference-impressions-per-user", type=float, default=defaults.impressions_per_user
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("data/large-world"),
        help="where both worlds' data, bundles and logs live; reused when there",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0, help="per mode, world and round")
    # Four callers keep two cores busy; many more and the gateway's admission sheds requests.
    parser.add_argument("--workers", type=int, default=4, help="callers at saturation")
    parser.add_argument("--start-timeout", type=float, default=1800.0, help="seconds per stack")
    parser.add_argument(
        "--reference-data",
        type=Path,
        help="serve a 10k-item world trained already: its data dir (holding synthetic/) ...",
    )
    parser.add_argument(
        "--reference-artifacts", type=Path, help="... and its artifacts (holding current/)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/train"))
    args = parser.parse_args(argv)
    if (args.reference_data is None) != (args.reference_artifacts is None):
        parser.error("--reference-data and --reference-artifacts go together")
    trained = None
    if args.reference_data is not None:
        trained = (args.reference_data, args.reference_artifacts)
    worlds = {
        "large": World(
            "large", args.items, args.users, args.impressions_per_user,
            args.work_dir / f"{args.items}-items-{args.users}-users",
        ),
        "reference": World(
            "reference", args.reference_items, args.reference_users,
            args.reference_impressions_per_user,
            args.work_dir / f"{args.reference_items}-items-{args.reference_users}-users",
            trained,
        ),
    }  # fmt: skip
    rehearsal = args.items < MILLION
    report: dict = {
        "title": f"A {args.items:,}-item world end to end, beside the "
        f"{args.reference_items:,}-item world",
        "rehearsal": rehearsal,
        "command": "python -m bench.large_world " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_average_start": round(os.getloadavg()[0], 2)},
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "workers": args.workers,
        "worlds": {},
    }
    for name, world in worlds.items():
        print(f"== {name}: {world.items:,} items, {world.users:,} users", flush=True)
        entry = {
            "items": world.items,
            "users": world.users,
            "impressions_per_user": world.impressions_per_user,
        }
        if world.trained:
            entry["data"] = str(world.data_dir)
            entry["generation"] = {}
            entry["training"] = reused(world)
        else:
            entry["generation"] = generate(world)
            entry["training"] = train(world)
        entry["rows"] = world_rows(world)
        print(json.dumps(entry), flush=True)
        report["worlds"][name] = entry
    report["profile"] = default_profile(DATASET)
    served = serve(worlds, args)
    for name in worlds:
        report["worlds"][name]["serving"] = served[name]
    report["ratios"] = ratios(served, "large", "reference")
    report["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    stem = "large_world_small" if rehearsal else "large_world"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
