"""`cascade data import --name NAME (--recbole DIR | --mapping FILE)`: bring your own data.

    cascade data import --name tiny-music --mapping examples/tiny-music/mapping.toml
    cascade data import --name ml-100k-recbole --recbole data/raw/ml-100k \
        --mapping examples/recbole-ml-100k.toml
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cascade.data.assemble import import_dataset, summary
from cascade.data.mapping import load_mapping
from cascade.data.schema import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade data import",
        description="Import interactions (and optionally items, users, follows) from RecBole "
        "atomic files or CSV / Parquet with a TOML mapping file into DATA_DIR/NAME/ in the "
        "common schema, with external ids kept in DATA_DIR/NAME/ids/. Nothing is written when "
        "the input is bad.",
    )
    parser.add_argument("--name", required=True, help="the dataset's name (folder under DATA_DIR)")
    parser.add_argument("--recbole", type=Path, help="a folder of RecBole atomic files")
    parser.add_argument("--mapping", type=Path, help="TOML mapping file (columns and files)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing DATA_DIR/NAME")
    parser.add_argument("--strict", action="store_true", help="every dropped row is an error")
    parser.add_argument("--negatives", type=int, help="sampled impressions per interaction")
    parser.add_argument("--seed", type=int, help="seed of the sampled impressions")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.recbole is None and args.mapping is None:
        print("cascade data import: give --recbole DIR and/or --mapping FILE", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        mapping = load_mapping(args.mapping, args.recbole)
        mapping.strict |= args.strict
        if args.negatives is not None:
            mapping.negatives_per_positive = args.negatives
        if args.seed is not None:
            mapping.seed = args.seed
        dataset, report = import_dataset(
            args.name, mapping, args.data_dir, args.force, progress=not args.quiet
        )
    except DataError as error:
        print(f"cascade data import: {error}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(f"{args.name}: imported into {args.data_dir / args.name} in {seconds:.1f} s")
    print(summary(dataset, report), flush=True)
    for reason, count in report.dropped.items():
        print(f"warning: dropped {count:,} rows: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
