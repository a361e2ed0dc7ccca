"""Two simulation runs of the same world, users and seed side by side: one arm's expected
engagement per day in run A over run B (e.g. the cascade retrained daily vs never).

    python -m research.compare_runs results/loop/simulation.json \
        results/loop/no-retrain/simulation.json --arm cascade --out results/loop/retrain_vs_frozen

Runs with the same seed and arms give the same users the same arm and the reference arms the
same pages, so the difference is the arm's own. Intervals: the delta method from each run's 95%
half-width, as if independent (conservative: the runs share users and sessions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def compare(a: dict, b: dict, arm: str) -> list[dict]:
    """Per day: the arm's expected engagement and gap closed in each run, and A / B."""
    if a["config"]["seed"] != b["config"]["seed"] or a["config"]["users"] != b["config"]["users"]:
        raise ValueError("the runs differ in seed or users: their sessions are not comparable")
    first = {r["day"]: r for r in a["rows"] if r["arm"] == arm}
    second = {r["day"]: r for r in b["rows"] if r["arm"] == arm}
    out = []
    for day in sorted(first.keys() & second.keys()):
        x, y = first[day], second[day]
        ratio = x["expected_engagement"] / y["expected_engagement"]
        relative = (
            (x["expected_ci95"] / x["expected_engagement"]) ** 2
            + (y["expected_ci95"] / y["expected_engagement"]) ** 2
        ) ** 0.5
        out.append(
            {
                "day": day,
                "a": x["expected_engagement"],
                "b": y["expected_engagement"],
                "a_gap_closed": x.get("oracle_gap_closed"),
                "b_gap_closed": y.get("oracle_gap_closed"),
                "ratio": round(ratio, 4),
                "ci95": round(ratio * relative, 4),
            }
        )
    return out


def to_markdown(rows: list[dict], arm: str, a: Path, b: Path) -> str:
    lines = [
        f"# {arm}: {a} (A) vs {b} (B)",
        "",
        "Expected engagement per impression of the arm per simulated day, the fraction of the "
        "oracle-random gap it closes, and A / B with a delta-method 95% interval.",
        "",
        "| day | A | B | A gap closed | B gap closed | A / B | ± (95%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['day']} | {r['a']:.4f} | {r['b']:.4f} | {r['a_gap_closed']:.3f} "
            f"| {r['b_gap_closed']:.3f} | {r['ratio']:.3f} | {r['ci95']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="simulation.json of run A")
    parser.add_argument("b", type=Path, help="simulation.json of run B")
    parser.add_argument("--arm", default="cascade")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    rows = compare(json.loads(args.a.read_text()), json.loads(args.b.read_text()), args.arm)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    text = to_markdown(rows, args.arm, args.a, args.b)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
