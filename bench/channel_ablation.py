"""Leave-one-channel-out on the synthetic world's truth: what each recall channel adds.

The frozen stack (artifacts/synthetic/current) under a served profile, in this process
(bench/truth_pages.py); the headline's test users (research/evaluation_e2e.py, `--split test`,
seed 0). Row "all" serves every channel; row "without X" switches channel X off (it neither fills
slots nor tags candidates for the ranker) and gives its quota to the others in proportion to
theirs, so recall still asks for the same count. A channel's contribution is the per-user paired
difference all - without in true engagement@10, with its bootstrap 95% interval; it keeps its
place unless the interval's upper bound is below 0. Each configuration's pages are kept under
--run-dir per part of the users, so a stopped run resumes where it stopped and several processes
can share the work (--configs, --shards, --shard).

    python -m bench.channel_ablation --out results/recall [--users 5000] [--profile default]
        [--configs all mf ...] [--shards 4 --shard 0 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.inprocess import InProcessCascade
from bench.truth_pages import PAGE, Served, channel_names, open_cascade, pages, slot_engagement
from cascade.candidates import channel_bit
from cascade.data import load_dataset
from cascade.profiles import DEFAULT, load_profile
from research.evaluation_e2e import TRUTH, evaluated_protocol, paired_difference
from research.simulate import World
from services.recall.server import RecallSettings

ALL = "all"


def served_quotas(profile: str) -> dict[str, float]:
    """Recall's channel quotas under `profile` (the services' defaults below it)."""
    from cascade.config import load_settings
    from cascade.profiles import layers

    settings = load_settings(
        RecallSettings, environ={}, profiles=layers([load_profile(profile)], "recall")
    )
    return {name: b.quota for name, b in settings.budgets().items() if b.enabled}


def without(quotas: dict[str, float], channel: str) -> dict[str, float]:
    """`quotas` less `channel`, the others scaled to the same total."""
    rest = {name: q for name, q in quotas.items() if name != channel}
    total, left = sum(quotas.values()), sum(rest.values())
    return {name: q * total / left for name, q in rest.items()} if left > 0 else rest


def page_channels(found: Served, slots: np.ndarray) -> dict[str, dict[str, float]]:
    """Per channel: the share of filled page slots whose item it found (tags overlap, so shares
    sum past 1) and those slots' mean expected engagement, beside the other slots' mean: where
    a channel's candidates land on the page and how well they do there."""
    filled = found.pages > 0
    out = {}
    for name in channel_names():
        tagged = filled & ((found.masks & np.uint32(channel_bit(name))) > 0)
        others = filled & ~tagged
        out[name] = {
            "slot_share": round(float(tagged.sum() / max(filled.sum(), 1)), 4),
            "engagement_tagged": round(float(slots[tagged].mean()), 4) if tagged.any() else 0.0,
            "engagement_others": round(float(slots[others].mean()), 4) if others.any() else 0.0,
        }
    return out


def ablate(args: argparse.Namespace) -> dict:
    dataset = load_dataset("synthetic", args.data_dir)
    users = evaluated_protocol(dataset, "test", args.users, args.seed).users
    world = World(dataset)
    quotas = served_quotas(args.profile)
    key = hashlib.sha256(
        json.dumps([users.tolist(), args.profile, str(args.artifacts)]).encode()
    ).hexdigest()[:12]
    args.run_dir.mkdir(parents=True, exist_ok=True)
    names = [ALL, *[c for c in channel_names() if c in quotas]]
    mixes = {n: quotas if n == ALL else without(quotas, n) for n in names}

    def part(name: str, shard: int) -> Path:
        return args.run_dir / f"{key}-{name}-{shard}of{args.shards}.npz"

    # Shard by shard, every configuration of this process on the same users, so whatever is
    # measured when a run stops is already paired.
    opened: dict[str, InProcessCascade] = {}
    for shard in args.shard:
        mine = users[shard :: args.shards]
        for name in [n for n in names if n in args.configs and not part(n, shard).exists()]:
            if name not in opened:
                recall = {} if name == ALL else {name: {"enabled": False}}
                opened[name] = open_cascade(args.artifacts, args.data_dir, args.profile, recall)
            started = time.perf_counter()
            found = pages(opened[name], mine, mixes[name])
            slots = slot_engagement(world, mine, found.pages)
            seconds = time.perf_counter() - started
            np.savez(
                part(name, shard),
                pages=found.pages,
                masks=found.masks,
                slots=slots,
                degraded=found.degraded,
                seconds=seconds,
            )
            print(f"{name} shard {shard}: {slots.sum(axis=1).mean() / PAGE:.4f}", flush=True)
    opened.clear()
    # The report pairs the configurations measured on the users of every shard they all share.
    measured = [n for n in names if any(part(n, k).exists() for k in range(args.shards))]
    common = [k for k in range(args.shards) if all(part(n, k).exists() for n in measured)]
    users = np.concatenate([users[k :: args.shards] for k in common]) if common else users[:0]
    order = np.argsort(users)
    users = users[order]
    values, runs = {}, {}
    for name in measured if common else []:
        shards = [np.load(part(name, k)) for k in common]
        found = Served(
            np.concatenate([s["pages"] for s in shards])[order],
            np.concatenate([s["masks"] for s in shards])[order],
            int(sum(int(s["degraded"]) for s in shards)),
        )
        slots = np.concatenate([s["slots"] for s in shards])[order]
        values[name] = slots.sum(axis=1) / PAGE
        runs[name] = {
            "degraded_answers": found.degraded,
            "quotas": {k: round(v, 4) for k, v in mixes[name].items()},
            "page_channels": page_channels(found, slots),
            "seconds": round(sum(float(s["seconds"]) for s in shards), 1),
        }
    missing = [n for n in [ALL, *quotas] if n not in values]
    if ALL in missing or len(missing) == len(quotas):  # nothing to pair yet
        return {"missing": missing}
    rows = []
    for name, per_user in values.items():
        label = name if name == ALL else f"without {name}"
        row = {"config": label, TRUTH: round(float(per_user.mean()), 4), **runs[name]}
        if name != ALL:
            paired = paired_difference({TRUTH: values[ALL]}, {TRUTH: per_user}, args.seed)
            row["contribution"] = paired[TRUTH]  # all - without
            row["keeps_place"] = paired[TRUTH]["ci95_high"] >= 0
        rows.append(row)
    return {
        "users": len(users),
        "sample": args.users,  # users drawn; `users` of them measured (the shards all share)
        "shards_measured": f"{len(common)} of {args.shards}",
        "split": "test: the headline's users (evaluated_protocol 'test', the same draw as "
        f"`cascade eval cascade --sample {args.users} --seed {args.seed}`)",
        "seed": args.seed,
        "profile": load_profile(args.profile).record(),
        "bundle": str(args.artifacts),
        "served_quotas": quotas,
        "rows": rows,
        "not_measured": missing,  # channels this run left out (--configs)
    }


def to_markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        "# Leave-one-channel-out on the synthetic world's truth",
        "",
        f"{report['users']} headline test users (seed {report['seed']}), one page of 10 each "
        f"from the frozen stack ({report['bundle']}) under profile {report['profile']['name']} "
        "(`python -m bench.channel_ablation`, `make bench-channel-ablation`). "
        f'"without X": channel X off (no slots, no tags), its quota shared by the others in '
        f"proportion. Score: {TRUTH} (the world's expected play + complete + 2 like + 3 share "
        "per impression). Contribution = all - without, per-user paired, bootstrap 95% interval.",
        "",
        f"| config | {TRUTH} | contribution (all - without) | 95% interval | better / worse "
        "without | keeps its place | degraded |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paired = row.get("contribution")
        cells = (
            f"{paired['mean_difference']:+.4f} | [{paired['ci95_low']:+.4f}, "
            f"{paired['ci95_high']:+.4f}] | {paired['users_worse']} / {paired['users_better']} | "
            f"{'yes' if row['keeps_place'] else 'no'}"
            if paired
            else "- | - | - | -"
        )
        degraded = row["degraded_answers"]
        lines.append(f"| {row['config']} | {row[TRUTH]:.4f} | {cells} | {degraded} |")
    negative = [
        r["config"].removeprefix("without ")
        for r in rows
        if r.get("contribution", {}).get("mean_difference", 0) < 0
    ]
    lines += [
        "",
        *(
            [f"Not measured in this run: {', '.join(report['not_measured'])}.", ""]
            if report.get("not_measured")
            else []
        ),
        "Channels whose point estimate is negative: "
        + (", ".join(negative) if negative else "none")
        + ".",
        "",
        "Where each channel's candidates land with every channel on (row all): the share of page "
        "slots whose item the channel found (an item found by several channels counts for each) "
        "and the mean expected engagement of those slots beside the page's other slots.",
        "",
        "| channel | page slots it found | engagement of its slots | of the other slots |",
        "|---|---|---|---|",
    ]
    for name, mix in rows[0]["page_channels"].items():
        lines.append(
            f"| {name} | {mix['slot_share']:.3f} | {mix['engagement_tagged']:.4f} | "
            f"{mix['engagement_others']:.4f} |"
        )
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/synthetic"))
    parser.add_argument("--profile", default=DEFAULT, help="the served profile (deploy/profiles)")
    parser.add_argument("--users", type=int, default=5000, help="headline test users sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=[ALL, *channel_names()],
        default=[ALL, *channel_names()],
        help="measure only these (all, or a channel left out); the report is written once every "
        "configuration is measured (several processes may share --run-dir)",
    )
    parser.add_argument("--shards", type=int, default=1, help="users split into this many parts")
    parser.add_argument(
        "--shard",
        type=int,
        nargs="+",
        help="measure only these parts (0-based; default: all), so processes can share the users",
    )
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/channel-ablation"))
    parser.add_argument("--out", type=Path, default=Path("results/recall"))
    args = parser.parse_args(argv)
    args.shard = range(args.shards) if args.shard is None else args.shard
    report = ablate(args)
    if "missing" in report:
        print(f"this process's part is measured; still to measure: {report['missing']}")
        return 0
    # Wall time of the measurements (each configuration's own, summed over processes).
    report["seconds"] = round(sum(row["seconds"] for row in report["rows"]), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channels_ablation.json").write_text(json.dumps(report, indent=2))
    (args.out / "channels_ablation.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"saved {args.out}/channels_ablation.json, channels_ablation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
