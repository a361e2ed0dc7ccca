"""Writes the generated observability files: Prometheus rules and Grafana dashboards.

python -m deploy.generate            # rewrite deploy/prometheus/rules/*.yml, dashboards/*.json
python -m deploy.generate --check    # exit 1 naming any committed file that differs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from deploy import grafana_dashboards, prometheus_rules

ROOT = Path(__file__).resolve().parent.parent


def generated() -> dict[str, str]:
    """Path (from the repository root) -> the text the generators produce."""
    return {**prometheus_rules.files(), **grafana_dashboards.files()}


def differing(files: Mapping[str, str | bytes] | Mapping[Path, bytes], root: Path) -> list[str]:
    """The generated files (path from `root` -> text or bytes) whose copy under `root` differs
    or is missing."""
    out = []
    for path, content in files.items():
        file = root / path
        data = content.encode() if isinstance(content, str) else content
        if not file.exists() or file.read_bytes() != data:
            out.append(str(path))
    return out


def write_or_check(
    files: Mapping[str, str | bytes] | Mapping[Path, bytes],
    stale: Callable[[], list[str]],
    command: str,
    description: str,
    argv: Sequence[str] | None,
) -> int:
    """A generator's command line: write `files` under ROOT, or with --check exit 1 naming
    every entry `stale()` reports (`command` regenerates them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        for path in differ:
            print(f"stale: {path} (run {command})")
        return 1 if differ else 0
    for path, content in files.items():
        file = ROOT / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content.encode() if isinstance(content, str) else content)
        print(f"wrote {path}")
    return 0


def stale(root: Path = ROOT) -> list[str]:
    """Generated files whose committed text differs (or that are missing)."""
    return differing(generated(), root)


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.splitlines()[0]
    return write_or_check(generated(), stale, "python -m deploy.generate", description, argv)


if __name__ == "__main__":
    sys.exit(main())
