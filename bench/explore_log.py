"""What the traffic pool's slots (`explored` in the impression log) brought to a simulation run's
event log: explored slots, the uploads they showed, and the plays those uploads got (what the
daily retrain can learn them from).

    python -m bench.explore_log --run-dir .cascade/simulate-explore --out results/loop/explore

Reads RUN_DIR/eventlog (the gateway's log of `cascade simulate --run-dir RUN_DIR`); writes
explore_log.json under OUT: per arm, explored slots, those on uploads (items uploaded during the
run) and on other recent items, organic (unexplored) impressions on uploads, and the play,
complete and like events on uploads, with the distinct uploads played.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cascade.backends import open_event_log


def measure(run_dir: Path) -> dict:
    log = open_event_log(f"file:{run_dir / 'eventlog'}", read_only=True)
    try:
        events, pages, uploads = (
            log.read_events(),
            log.read_impressions(),
            log.read_records("uploads"),
        )
    finally:
        log.close()
    first = int(uploads["item_id"].to_numpy().min()) if uploads.num_rows else 2**62
    report: dict = {"uploads": uploads.num_rows, "arms": {}}
    items, names = events["item_id"].to_numpy(), np.asarray(events["event"].to_pylist())
    on_upload = items >= first
    request_arm = dict(zip(pages["request_id"].to_pylist(), pages["arm"].to_pylist(), strict=True))
    arm_of_event = np.asarray([request_arm.get(r, "") for r in events["request_id"].to_pylist()])
    rows = zip(
        pages["arm"].to_pylist(),
        pages["item_ids"].to_pylist(),
        pages["explored"].to_pylist(),
        strict=True,
    )
    for arm, ids, flags in rows:
        entry = report["arms"].setdefault(
            arm,
            {"pages": 0, "explored": 0, "explored_uploads": 0, "organic_uploads": 0},
        )
        entry["pages"] += 1
        for item, explored in zip(ids, flags or [False] * len(ids), strict=True):
            entry["explored"] += int(explored)
            entry["explored_uploads"] += int(explored and item >= first)
            entry["organic_uploads"] += int(not explored and item >= first)
    for arm, entry in report["arms"].items():
        mine = on_upload & (arm_of_event == arm)
        for name in ("play", "complete", "like"):
            entry[f"upload_{name}s"] = int((mine & (names == name)).sum())
        entry["uploads_played"] = len(np.unique(items[mine & (names == "play")]))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/simulate"))
    parser.add_argument("--out", type=Path, default=Path("results/loop/explore"))
    args = parser.parse_args(argv)
    report = measure(args.run_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explore_log.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
