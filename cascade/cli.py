"""The `cascade` command line: one subcommand per routine job (`cascade <command> --help`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cascade.data import SOURCES, DataError, load_dataset, prepare


def _data(args: argparse.Namespace) -> None:
    sources = SOURCES if args.source == "all" else (args.source,)
    for source in sources:
        options = {}
        if source == "synthetic":
            options = {
                "n_users": args.users,
                "n_items": args.items,
                "impressions_per_user": args.impressions_per_user,
                "seed": args.seed,
            }
        started = time.perf_counter()
        dataset = prepare(source, args.data_dir, **options)
        seconds = time.perf_counter() - started
        counts = ", ".join(
            f"{len(dataset.table(t)[next(iter(dataset.table(t)))]):,} {t}"
            for t in ("users", "items", "creators", "follows", "interactions", "impressions")
        )
        print(f"{source}: {counts} -> {args.data_dir / source} ({seconds:.1f} s)")


def _baselines(args: argparse.Namespace) -> None:
    from cascade.baselines import evaluate_baselines, format_table

    rows = []
    for name in args.dataset:
        dataset = load_dataset(name, args.data_dir)
        rows += evaluate_baselines(dataset, protocols=tuple(args.protocol), progress=True)
    print(format_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
        print(f"saved {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Cascade: a multi-stage recommender (recall -> pre-rank -> rank -> rerank) "
        "served as gRPC microservices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    data = commands.add_parser(
        "data",
        help="fetch MovieLens-100K and/or generate the synthetic world",
        description="Prepare a data source in the common schema under DATA_DIR/<source>/. "
        "ml-100k is downloaded offline-style from the recbole==1.2.1 wheel (never installed); "
        "synthetic is a seeded UGC music-platform world with a known ground truth.",
    )
    data.add_argument(
        "--source",
        choices=(*SOURCES, "all"),
        default="all",
        help="which source to prepare (default: all)",
    )
    data.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    data.add_argument("--users", type=int, default=20_000, help="synthetic: number of users")
    data.add_argument("--items", type=int, default=10_000, help="synthetic: number of items")
    data.add_argument(
        "--impressions-per-user",
        type=float,
        default=200.0,
        help="synthetic: mean logged impressions per user (about 8%% are played)",
    )
    data.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    data.set_defaults(run=_data)

    baselines = commands.add_parser(
        "baselines",
        help="evaluate MostPopular, ItemKNN and EASE: the yardsticks every stage must beat",
        description="Full-ranking evaluation (against all items) of the baselines under the "
        "per-user temporal split (primary) and a global time cut (secondary; noisy on ml-100k).",
    )
    baselines.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    baselines.add_argument(
        "--dataset",
        nargs="+",
        choices=SOURCES,
        default=["ml-100k"],
        help="datasets to evaluate (default: ml-100k)",
    )
    baselines.add_argument(
        "--protocol",
        nargs="+",
        choices=("per_user", "global_cut"),
        default=["per_user", "global_cut"],
        help="split protocols",
    )
    baselines.add_argument(
        "--out",
        type=Path,
        default=Path("results/baselines.json"),
        help="JSON file for the table (default: results/baselines.json)",
    )
    baselines.set_defaults(run=_baselines)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except DataError as error:
        print(f"cascade {args.command}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
