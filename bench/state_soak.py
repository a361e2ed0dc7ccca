"""Memory soak of the online state: events from 1M distinct user ids, RSS against the bound.

Two processes, each measured alone (a fresh interpreter, RSS from /proc/self/status):
- "store": the embedded feature store as recall serves it (ml-100k's tables and training period)
  taking a play and a like per user;
- "gateway": the gateway's per-user record (gateway.online.OnlineEvents) taking the same events.
User ids are random int63 values (what any platform id could be): nothing may be sized by an
id's value. Both keep at most `max_users` users (LRU), so memory is bounded by what max_users
users take, not by how many ids were ever seen. The stated bound: RSS after 1M users <= RSS at
start + 2 x (the growth while the first max_users users arrived): under churn the LRU map's hash
table keeps up to about as much again in free slots, and freed objects stay in Python's arenas.
The run also reports the growth over its second half, which is 0 once memory has levelled off.

    python -m bench.state_soak --out results/state [--users 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHURN_FACTOR = 2.0  # the filled state, plus as much again of hash-table slack and free arenas


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(part: str, data_dir: Path, users: int, max_users: int, batch: int = 1000) -> dict:
    """Runs one part in this process and returns its RSS curve."""
    rng = np.random.default_rng(0)
    if part == "store":
        from cascade.data import load_dataset
        from cascade.data.split import split_dataset
        from cascade.feature_store import InMemoryFeatureStore, StoreLimits
        from cascade.features import build_spec

        dataset = load_dataset("ml-100k", data_dir)
        limits = StoreLimits(max_users=max_users)
        store = InMemoryFeatureStore.from_split(
            dataset, build_spec(dataset), split_dataset(dataset), limits
        )
        n_items = dataset.n_items

        def record(user_ids, item_ids, ts, names):
            store.record(user_ids, item_ids, ts, names)

        held = lambda: store.online_users  # noqa: E731
    else:
        from gateway.online import OnlineEvents

        online = OnlineEvents(per_user=50, max_users=max_users)
        n_items = 1683

        def record(user_ids, item_ids, ts, names):
            online.record(user_ids, item_ids, names)

        held = lambda: len(online._recent)  # noqa: E731
    curve = [{"users": 0, "rss_mb": round(rss_mb(), 1), "held": 0}]
    started = time.perf_counter()
    user_ids = rng.integers(1, 2**63 - 1, size=users, dtype=np.int64)
    step = max(users // 10, batch)
    for start in range(0, users, batch):
        ids = user_ids[start : start + batch]
        n = len(ids)
        both = np.repeat(ids, 2)
        items = rng.integers(1, n_items, size=2 * n)
        ts = np.full(2 * n, 1_000_000_000, dtype=np.int64) + np.arange(2 * n)
        record(both, items, ts, ["play", "like"] * n)
        done = start + n
        if done % step == 0 or done == users or done == max_users:
            curve.append({"users": done, "rss_mb": round(rss_mb(), 1), "held": held()})
    at_cap = next((p for p in curve if p["users"] >= max_users), curve[-1])
    final = curve[-1]
    half = next(p for p in curve if p["users"] >= users // 2)
    bound = curve[0]["rss_mb"] + CHURN_FACTOR * (at_cap["rss_mb"] - curve[0]["rss_mb"])
    return {
        "part": part,
        "users": users,
        "events": 2 * users,
        "max_users": max_users,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_start_mb": curve[0]["rss_mb"],
        "rss_at_max_users_mb": at_cap["rss_mb"],
        "rss_final_mb": final["rss_mb"],
        "users_held": final["held"],
        "bound_mb": round(bound, 1),
        "within_bound": final["rss_mb"] <= bound,
        "growth_over_second_half_mb": round(final["rss_mb"] - half["rss_mb"], 1),
        "curve": curve,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--max-users", type=int, default=100_000, help="StoreLimits.max_users")
    parser.add_argument("--part", choices=("store", "gateway"), help="run one part (internal)")
    parser.add_argument("--out", type=Path, default=Path("results/state"))
    args = parser.parse_args(argv)
    if args.part:
        print(json.dumps(soak(args.part, args.data_dir, args.users, args.max_users)))
        return 0
    report = {"machine": "shared 2-core VM; RSS of a fresh process per part"}
    for part in ("store", "gateway"):
        command = [
            sys.executable,
            "-m",
            "bench.state_soak",
            "--part",
            part,
            "--users",
            str(args.users),
            "--max-users",
            str(args.max_users),
            "--data-dir",
            str(args.data_dir),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        report[part] = json.loads(output.strip().splitlines()[-1])
        row = report[part]
        verdict = "ok" if row["within_bound"] else "EXCEEDED"
        print(
            f"{part}: RSS {row['rss_start_mb']} MB at start, {row['rss_at_max_users_mb']} MB at "
            f"{row['max_users']} users, {row['rss_final_mb']} MB after {row['users']} users "
            f"(bound {row['bound_mb']} MB: {verdict})"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(report[p]["within_bound"] for p in ("store", "gateway")) else 1


if __name__ == "__main__":
    sys.exit(main())
