"""Writes the generated observability files: Prometheus rules and Grafana dashboards.

python -m deploy.generate            # rewrite deploy/prometheus/rules/*.yml, dashboards/*.json
python -m deploy.generate --check    # exit 1 naming any committed file that differs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy import grafana_dashboards, prometheus_rules

ROOT = Path(__file__).resolve().parent.parent


def generated() -> dict[str, str]:
    """Path (from the repository root) -> the text the generators produce."""
    return {**prometheus_rules.files(), **grafana_dashboards.files()}


def stale(root: Path = ROOT) -> list[str]:
    """Generated files whose committed text differs (or that are missing)."""
    out = []
    for path, text in generated().items():
        file = root / path
        if not file.exists() or file.read_text() != text:
            out.append(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        for path in differ:
            print(f"stale: {path} (run python -m deploy.generate)")
        return 1 if differ else 0
    for path, text in generated().items():
        file = ROOT / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
