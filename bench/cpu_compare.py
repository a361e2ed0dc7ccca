"""Per-process CPU per request before and after a change, from two `bench.overload --only-tax` runs.

    python -m bench.overload --only-tax --out results/cascade/cpu/before   # on the old code
    python -m bench.overload --only-tax --out results/cascade/cpu/after    # on the new code
    python -m bench.cpu_compare results/cascade/cpu/before results/cascade/cpu/after

Each run holds medians of its repeats (closed loop at saturation, then the in-process yardstick
right after); the two runs are minutes apart on a shared machine, so the split tax (a ratio within
each run) is the steadier comparison than any absolute figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def table(before: dict, after: dict) -> str:
    cpu_before = before["closed_loop"]["cpu_ms_per_request"]
    cpu_after = after["closed_loop"]["cpu_ms_per_request"]
    lines = [
        "# CPU per request at saturation, before and after (medians of each run's repeats)",
        "",
        "| process | before ms | after ms | after / before |",
        "|---|---|---|---|",
    ]
    for name in cpu_before:
        b, a = cpu_before[name], cpu_after.get(name)
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        lines.append(f"| {name} | {b} | {a} | {ratio} |")

    def stack(cpu: dict) -> float:
        return sum(v for k, v in cpu.items() if k != "load generator")

    lines += [
        f"| services, summed | {stack(cpu_before):.3f} | {stack(cpu_after):.3f} | "
        f"{stack(cpu_after) / stack(cpu_before):.2f} |",
        f"| in one process (yardstick) | {before['in_process']['cpu_ms_per_request']} | "
        f"{after['in_process']['cpu_ms_per_request']} | - |",
        "",
        f"- Split tax: {before['split_tax']}x before, {after['split_tax']}x after "
        f"(repeats {[r['split_tax'] for r in before['tax_repeats']]} -> "
        f"{[r['split_tax'] for r in after['tax_repeats']]})",
        f"- Gateway CPU share: {100 * before['gateway_cpu_share']:.1f}% before, "
        f"{100 * after['gateway_cpu_share']:.1f}% after",
        f"- Saturation: {before['saturation_rps']} req/s before, {after['saturation_rps']} after",
        "- 2 shared cores, other work running: the runs are minutes apart, compare the ratios",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="--out of the run on the old code")
    parser.add_argument("after", type=Path, help="--out of the run on the new code")
    args = parser.parse_args(argv)
    before = json.loads((args.before / "tax.json").read_text())
    after = json.loads((args.after / "tax.json").read_text())
    text = table(before, after)
    out = args.after.parent / "before_after.md"
    out.write_text(text)
    print(text + f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
