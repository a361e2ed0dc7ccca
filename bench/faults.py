"""Fault drill under load: a fixed request rate for the whole run while a stage is killed and
restarted, another is paused past its budget, and a new bundle version is rolled out.

    python -m bench.faults --out results/ops [--rate 60] [--duration 90]
    python -m bench.faults --case replica-pause --out results/security   (bench/replica_pause.py)

The stack runs as separate processes on free loopback ports, on a private artifacts folder whose
`current` points at the given bundle (the caller's own `current` is never touched). Timeline,
in seconds from the start of the load, each fault in its own window:

    kill   at 10: kill -9 rank, then start it again at once (it reloads its model, seconds)
    pause  at 35: SIGSTOP recall for 3 s (far past its budget), then SIGCONT
    swap   at 55: publish a new bundle version (the same models, cloned); every service polls the
                  `current` link and swaps the new version in while serving

Every request asks for the debug trace, so the per-stage latencies and model versions come from
the gateway. A request is failed when the gateway answers with an error, degraded when it answers
with a fallback. Recovery: from the fault until the first answer after the fault's last degraded
one (swap: until the first answer after which every stage reports the new version).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app import stack
from bench.answers import Answer, ask_traced, percentiles
from bench.load import P99_LIMIT_MS, fixed_rate
from cascade.artifacts import Bundle, clone, publish

FAULTS = (  # (name, stage, starts at s, lasts s)
    ("kill", "rank", 10.0, 0.0),
    ("pause", "recall", 35.0, 3.0),
    ("swap", "", 55.0, 0.0),
)
WINDOW_S = 20.0  # a fault's effects are looked for this long after it starts


def inject(running: stack.Stack, start: float, new_version: str, root: Path, log: list) -> None:
    """Runs the fault timeline (in a thread beside the load); `log` gets what happened when."""

    def pid(name: str) -> int:
        return next(s.pid for s in running.services if s.name == name)

    def note(event: str, **facts) -> None:
        log.append({"at_s": round(time.perf_counter() - start, 3), "event": event, **facts})

    # The sleeps keep the timeline (each fault at its second, for its duration): they wait for a
    # time, not for a state; the restarts wait for SERVING.
    for name, stage, at_s, lasts_s in FAULTS:
        time.sleep(max(0.0, start + at_s - time.perf_counter()))
        if name == "kill":
            os.kill(pid(stage), signal.SIGKILL)
            note("kill -9", stage=stage)
            stack.restart(running, stage, timeout_s=60)
            note("restarted and SERVING", stage=stage)
        elif name == "pause":
            os.kill(pid(stage), signal.SIGSTOP)
            note("SIGSTOP", stage=stage)
            time.sleep(lasts_s)
            os.kill(pid(stage), signal.SIGCONT)
            note("SIGCONT", stage=stage)
        else:
            clone(root, "base", new_version)
            publish(root, new_version)
            note("published", version=new_version)


def phase_report(answers: list[Answer], seconds: float) -> dict:
    ok = [a for a in answers if a.code == "OK"]
    failed: dict[str, int] = {}
    for a in answers:
        if a.code != "OK":
            failed[a.code] = failed.get(a.code, 0) + 1
    report = {
        "sent": len(answers),
        "answered": len(ok),
        "degraded": sum(bool(a.degraded) for a in ok),
        "failed": sum(failed.values()),
        "failed_codes": failed,
        "throughput_rps": round(len(ok) / seconds, 1) if seconds else 0.0,
        **percentiles([a.latency_ms for a in ok]),
        "stages": {},
    }
    for stage in dict.fromkeys(s for a in ok for s in a.stages):
        report["stages"][stage] = percentiles([a.stages[stage] for a in ok if stage in a.stages])
    return report


def recovery(answers: list[Answer], at_s: float, is_bad, until_s: float) -> float | None:
    """Seconds from the fault at `at_s` until the first answer after the last bad one in the
    window; 0 when no answer was bad; None when it had not recovered by `until_s`."""
    window = [a for a in answers if at_s <= a.sent_s < until_s]
    bad = [i for i, a in enumerate(window) if is_bad(a)]
    if not bad:
        return 0.0
    after = window[bad[-1] + 1 :]
    return round(after[0].sent_s - at_s, 3) if after else None


def drill_report(answers: list[Answer], events: list, new_version: str, duration: float) -> dict:
    answers = sorted(answers, key=lambda a: a.sent_s)
    report: dict = {"overall": phase_report(answers, duration), "events": events, "faults": []}
    starts = [at for _, _, at, _ in FAULTS] + [duration]
    for (name, stage, at_s, lasts_s), end_s in zip(FAULTS, starts[1:], strict=True):
        inside = [a for a in answers if at_s <= a.sent_s < end_s]
        if name == "swap":

            def bad(a: Answer) -> bool:
                return a.code != "OK" or set(a.versions.values()) != {new_version}
        else:

            def bad(a: Answer, stage=stage) -> bool:
                return a.code != "OK" or stage in a.degraded

        row = {
            "fault": name,
            "stage": stage or "all",
            "at_s": at_s,
            "lasts_s": lasts_s,
            **phase_report(inside, end_s - at_s),
            "recovery_s": recovery(answers, at_s, bad, min(end_s, at_s + WINDOW_S)),
        }
        row.pop("stages")
        report["faults"].append(row)
    before = [a for a in answers if a.sent_s < FAULTS[0][2]]
    report["before_faults"] = phase_report(before, FAULTS[0][2])
    return report


def markdown(report: dict) -> str:
    o = report["overall"]
    lines = [
        f"Fixed rate {report['rate']} req/s for {report['duration_s']} s "
        f"({report['dataset']}, bundle {report['bundle']} -> {report['new_version']}).",
        "",
        f"Overall: sent {o['sent']}, answered {o['answered']}, degraded {o['degraded']}, "
        f"failed {o['failed']}; end to end p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms.",
        "",
        "| stage | p50 ms | p99 ms |",
        "|---|---|---|",
        *(f"| {s} | {v['p50_ms']} | {v['p99_ms']} |" for s, v in o["stages"].items()),
        "",
        "| fault | stage | at s | sent | answered | degraded | failed | p50 ms | p99 ms | "
        "recovery s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in report["faults"]:
        lines.append(
            f"| {f['fault']} | {f['stage']} | {f['at_s']} | {f['sent']} | {f['answered']} | "
            f"{f['degraded']} | {f['failed']} | {f['p50_ms']} | {f['p99_ms']} | "
            f"{f['recovery_s']} |"
        )
    lines += ["", "Events:"]
    for e in report["events"]:
        lines.append(f"- {e['at_s']} s: {e['event']} {e.get('stage', e.get('version', ''))}")
    return "\n".join(lines) + "\n"


def plot(answers: list[Answer], report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = np.arange(int(report["duration_s"]) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    stages = list(report["overall"]["stages"])
    for stage in [*stages, "end to end"]:
        p99 = []
        for s in seconds:
            bucket = [a for a in answers if s <= a.sent_s < s + 1 and a.code == "OK"]
            values = [
                a.latency_ms if stage == "end to end" else a.stages.get(stage, np.nan)
                for a in bucket
            ]
            p99.append(np.nanpercentile(values, 99) if values else np.nan)
        top.plot(seconds, p99, label=f"{stage} p99", linewidth=2 if stage == "end to end" else 1)
    top.axhline(P99_LIMIT_MS, color="grey", linestyle="--", linewidth=0.8)
    top.set(ylabel="p99 per second (ms)", yscale="log", title="latency under faults")
    top.legend(ncol=3, fontsize=8)
    degraded = [sum(1 for a in answers if s <= a.sent_s < s + 1 and a.degraded) for s in seconds]
    failed = [sum(1 for a in answers if s <= a.sent_s < s + 1 and a.code != "OK") for s in seconds]
    bottom.bar(seconds, degraded, width=1.0, align="edge", label="degraded", color="tab:orange")
    bottom.bar(
        seconds, failed, width=1.0, align="edge", bottom=degraded, label="failed", color="tab:red"
    )
    bottom.set(xlabel="seconds", ylabel="answers per second")
    bottom.legend()
    for axis in (top, bottom):
        for name, stage, at_s, _ in FAULTS:
            axis.axvline(at_s, color="black", linewidth=0.8)
            if axis is top:
                axis.text(at_s + 0.3, top.get_ylim()[1] * 0.7, f"{name} {stage}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current", help="the bundle to start from")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/faults"))
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds; at least 75")
    parser.add_argument("--timeout", type=float, default=1.0, help="client deadline, seconds")
    parser.add_argument("--out", type=Path, default=Path("results/ops"))
    parser.add_argument(
        "--case",
        choices=("drill", "replica-pause"),
        default="drill",
        help="drill: the timeline above; replica-pause: 2 rank replicas, one SIGSTOPped 10 s",
    )
    args = parser.parse_args(argv)
    if args.case == "drill" and args.duration < FAULTS[-1][2] + WINDOW_S:
        parser.error(f"--duration must be at least {FAULTS[-1][2] + WINDOW_S:.0f} s")
    source = Bundle.open(args.artifacts, args.bundle)
    dataset = source.component("recall")["dataset"]
    # A private artifacts folder: `base` links the source bundle, `current` points at it.
    root = args.run_dir / "artifacts"
    if root.exists():
        shutil.rmtree(root)  # links and clones of an earlier drill (links only, never followed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "base").symlink_to(source.folder.resolve())
    publish(root, "base")
    new_version = f"{source.version}-rollout-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    from cascade.data import load_dataset

    users = np.random.default_rng(0).permutation(
        load_dataset(dataset, args.data_dir).users["user_id"]
    )
    if args.case == "replica-pause":
        return _replica_pause(args, root, dataset, source.version, users)
    with stack.running_stack(
        args.run_dir / "run", artifacts=root, data_dir=args.data_dir, dataset=dataset, train=False
    ) as running:
        target = running.address("gateway")
        print(running.describe(), flush=True)
        start = time.perf_counter() + 0.5
        events: list = []
        injector = threading.Thread(
            target=inject, args=(running, start, new_version, root, events), daemon=True
        )
        injector.start()

        def ask(stub, user: int, due: float):
            return ask_traced(stub, user, due, start, args.timeout)

        answers, _ = asyncio.run(fixed_rate(target, users, args.rate, args.duration, ask, start))
        injector.join(timeout=5)
    report = {
        "rate": args.rate,
        "duration_s": args.duration,
        "dataset": dataset,
        "bundle": source.version,
        "new_version": new_version,
        "client_timeout_s": args.timeout,
        **drill_report(answers, events, new_version, args.duration),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(report, indent=2))
    (args.out / "faults.md").write_text(markdown(report))
    plot(answers, report, args.out / "faults.png")
    print(markdown(report))
    print(f"saved {args.out}/faults.json, faults.md, faults.png")
    return 0


def _replica_pause(args, root: Path, dataset: str, bundle: str, users: np.ndarray) -> int:
    from bench import replica_pause

    report: dict = {
        "rate": args.rate,
        "client_timeout_s": args.timeout,
        "dataset": dataset,
        "bundle": bundle,
        "pause_s": replica_pause.PAUSE_S,
        "variants": [],
    }
    for name, env in replica_pause.VARIANTS:
        print(f"== {name}", flush=True)
        row = replica_pause.run_variant(
            name,
            env,
            root,
            args.data_dir,
            dataset,
            args.run_dir / "run",
            users,
            args.rate,
            args.timeout,
        )
        print(json.dumps({k: row[k] for k in ("before", "pause", "after")}), flush=True)
        report["variants"].append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replica_pause.json").write_text(json.dumps(report, indent=2))
    (args.out / "replica_pause.md").write_text(replica_pause.markdown(report))
    print(replica_pause.markdown(report))
    print(f"saved {args.out}/replica_pause.json, replica_pause.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
