"""The `cascade` command line: one subcommand per routine job (`cascade <command> --help`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from app.stages import DATA_PARALLEL, EVALUATE_MODULES, SERVER_MODULES, TRAIN_MODULES
from cascade.config import SettingsError
from cascade.data import SOURCES, DataError, load_dataset, prepare
from cascade.data.synthetic import SyntheticConfig
from cascade.profiles import default_profile, load_profile
from cascade.topology import GATEWAY, STAGES, TRAIN_ORDER, ports_from


def _data(args: argparse.Namespace) -> None:
    if args.action == "import":  # options before `import`: `cascade data --data-dir d import`
        from cascade.data.import_cli import main as import_main

        sys.exit(import_main([*args.options, "--data-dir", str(args.data_dir)]))
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
    from cascade.files import with_other_datasets

    out = args.out or args.data_dir / "run" / "baselines.json"
    rows = with_other_datasets(out, rows)  # datasets not run this time keep their rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"saved {out}")


# Each stage's own entry points (`main(argv)`, app/stages.py), reached as `cascade <verb> <stage>
# [options]`. The stage module owns its options: `cascade train rank --help` prints them.
ENTRY_POINTS: dict[str, dict[str, str]] = {
    "train": TRAIN_MODULES,
    "serve": {name: SERVER_MODULES[name] for name in STAGES},
    "eval": EVALUATE_MODULES,
}
_TRAIN_HELP = (
    "train a stage's models into a versioned artifact bundle; `all [--dataset D]` trains every "
    "stage into one new bundle and publishes it as artifacts/current"
)


def _run_entry_point(verb: str, stage: str, argv: list[str]) -> None:
    module = importlib.import_module(ENTRY_POINTS[verb][stage])
    # The stage's parser names itself after argv[0]: its usage line then reads as typed.
    program, sys.argv[0] = sys.argv[0], f"cascade {verb} {stage}"
    try:
        code = module.main(argv)
    finally:
        sys.argv[0] = program
    if code:
        sys.exit(code)


def _stage_command(args: argparse.Namespace) -> None:
    _run_entry_point(args.command, args.stage, args.options)


def _train_stage(stage: str, options: list[str], nproc: int) -> None:
    """One stage's training: in this process, or on `nproc` torchrun workers."""
    if nproc == 1:
        return _run_entry_point("train", stage, options)
    if stage not in DATA_PARALLEL:
        sys.exit(f"cascade train {stage}: --nproc applies to {', '.join(DATA_PARALLEL)} only")
    from training.distributed import LaunchError, launch

    try:
        launch(TRAIN_MODULES[stage], options, nproc, label=f"cascade train {stage}")
    except LaunchError as error:
        sys.exit(str(error))


def _nproc(options: list[str]) -> tuple[int, list[str]]:
    """`--nproc N` (workers, default 1) out of a stage's options."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--nproc", type=int, default=1, help="data-parallel workers (torchrun; default: 1)"
    )
    known, rest = parser.parse_known_args(options)
    if known.nproc < 1:
        sys.exit("cascade train: --nproc must be >= 1")
    return known.nproc, rest


def _train(args: argparse.Namespace) -> None:
    if args.stage != "all":
        nproc, stage_options = _nproc(args.options)
        return _train_stage(args.stage, stage_options, nproc)
    from cascade.artifacts import add_training_arguments, new_version, publish

    parser = argparse.ArgumentParser(prog="cascade train all", description=_TRAIN_HELP)
    add_training_arguments(parser)  # the same three options every stage's training takes
    parser.add_argument(
        "--version",
        help="bundle version (default: <dataset>-<UTC time>); an existing one resumes: its "
        "stages complete with the same options are skipped",
    )
    parser.add_argument("--no-publish", action="store_true", help="leave artifacts/current alone")
    parser.add_argument(
        "--event-log",
        help="learn from what the stack served: fold this event log (file:DIR or redis://...) "
        "into the training data and fine-tune the published bundle from it (training/retrain.py)",
    )
    parser.add_argument(
        "--profile",
        help="build the bundle with the profile's [train] settings (deploy/profiles/NAME.toml; "
        "default: the dataset's default profile)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="workers per data-parallel stage (torchrun on this machine; default: 1, in process)",
    )
    options = parser.parse_args(args.options)
    version = options.version or f"{options.dataset}-{new_version()}"
    profile = options.profile or default_profile(options.dataset)
    training = _training_settings(profile)
    if options.event_log:
        from training.retrain import retrain_from_log

        dataset = load_dataset(options.dataset, options.data_dir)
        report = retrain_from_log(
            options.artifacts,
            dataset,
            options.event_log,
            version,
            options.data_dir,
            publish_it=not options.no_publish,
        )
        print(json.dumps(report, indent=2))
        return None
    from app.train_all import ResumeError, StageRun, check_complete, train_all

    common = ["--dataset", options.dataset, "--data-dir", str(options.data_dir)]
    common += ["--artifacts", str(options.artifacts), "--version", version]
    # Pre-rank and rank learn from recall's output as the profile serves it.
    stages = [
        StageRun(stage, common + training.arguments(stage) + _served(stage, profile))
        for stage in TRAIN_ORDER
    ]

    def run_stage(run: StageRun) -> None:
        nproc = options.nproc if run.stage in DATA_PARALLEL else 1
        _train_stage(run.stage, run.arguments, nproc)

    try:  # the same command with the same --version resumes: complete stages are skipped
        train_all(options.artifacts, version, stages, run_stage, lambda s: print(s, flush=True))
    except ResumeError as error:
        sys.exit(f"cascade train all: {error}")
    if not options.no_publish:
        check_complete(options.artifacts, version, stages)
        publish(options.artifacts, version)
        print(f"published {options.artifacts / version} as {options.artifacts / 'current'}")


def _served(stage: str, profile: str) -> list[str]:
    return ["--profile", profile] if stage in ("prerank", "rank") else []


def _training_settings(profile: str):
    """The [train] settings of `profile` (a name or file); exit 2 naming the file and key."""
    from app.profiles import train_settings
    from cascade.config import SettingsError
    from cascade.profiles import load_profile

    try:
        return train_settings([load_profile(profile)])
    except SettingsError as error:
        print(f"cascade train all: {error}", file=sys.stderr)
        sys.exit(2)


def _stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".cascade"),
        help="where the stack keeps its pid file and logs (default: .cascade)",
    )


def _up(args: argparse.Namespace) -> None:
    from app import stack

    already = stack.running(args.run_dir)
    if already is not None and not args.restart:
        # Keep it (and its logs): a second `make up` is most often a forgotten first one.
        print(already.describe())
        print(
            "already running: left as it is (its logs untouched); "
            "`cascade up --restart` restarts it, `cascade down` stops it"
        )
        print(_activate_hint(), end="")
        if args.console:  # its explain token is given to the gateway at start
            print("the console starts with the stack: `cascade up --restart --console`")
        return
    # A base of 0 means free ports for every service.
    ports: dict[str, int] = ports_from(args.base_port)
    if not args.base_port:
        ports["redis"] = 0  # with --store redis: a free port too
    metrics = ports_from(args.metrics_base_port)
    console_env = _console_tokens() if args.console else {}
    try:
        profile = load_profile(args.profile or default_profile(args.dataset))
        running = stack.up(
            args.artifacts,
            args.data_dir,
            args.dataset,
            args.run_dir,
            ports,
            metrics,
            bundle=args.bundle,
            timeout_s=args.timeout,
            store=args.store,
            tls=args.tls,
            supervise=not args.no_supervise,
            profiles=[profile],
            extra_env={k: v for k, v in console_env.items() if k.startswith("CASCADE_GATEWAY_")},
        )
    except (stack.StackError, SettingsError) as error:
        print(f"cascade up: {error}", file=sys.stderr)
        sys.exit(1)
    if args.console:
        _start_console(args, console_env)
    tls = f" --tls-ca {running.certs / 'ca.pem'}" if running.certs else ""
    target = "" if running.address() == "127.0.0.1:50050" else f" --target {running.address()}"
    default_run_dir = args.run_dir == Path(".cascade")
    stop = (
        "cascade down  (or `make down`)"
        if default_run_dir
        else f"cascade down --run-dir {args.run_dir}"
    )
    print(_activate_hint(), end="")
    print(f"ask it: cascade recommend {_example_user(args)}{target}{tls}")
    print(f"stop it: {stop}")


def _activate_hint() -> str:
    """A line saying how to put `cascade` on the PATH when this shell's PATH lacks this
    console script (`make up` runs .venv/bin/cascade in a shell that may not have activated
    the venv), as the README's quickstart does it; else nothing."""
    script = Path(sys.argv[0]).resolve()
    found = shutil.which("cascade")
    if found and Path(found).resolve() == script:
        return ""
    activate = script.parent / "activate"
    shown = os.path.relpath(activate) if activate.exists() else ".venv/bin/activate"
    return f"(first, in your shell: `source {shown}` puts `cascade` on the PATH)\n"


def _example_user(args: argparse.Namespace) -> str:
    """A user to ask about: an imported dataset's first external key, else ml-100k's user 196."""
    from cascade.ids import IdMap

    path = args.data_dir / args.dataset / "ids" / "users.parquet"
    try:
        keys = IdMap.load(path, capacity=1 << 62).external([1])
    except (OSError, ValueError):
        return "--user 196"
    return "--user 1" if keys == ["1"] else f"--user-key {keys[0]}"


def _console_tokens() -> dict[str, str]:
    """The token the console's explained Recommend sends: the gateway's API token when the
    environment sets one, else a fresh explain token given to both."""
    import os
    import secrets

    token = os.environ.get("CASCADE_GATEWAY_API_TOKEN", "")
    if token:
        return {"CASCADE_CONSOLE_EXPLAIN_TOKEN": token}
    token = secrets.token_urlsafe(24)
    return {"CASCADE_GATEWAY_EXPLAIN_TOKEN": token, "CASCADE_CONSOLE_EXPLAIN_TOKEN": token}


def _start_console(args: argparse.Namespace, console_env: dict[str, str]) -> None:
    from app import stack
    from app.console import launch

    env = {k: v for k, v in console_env.items() if k.startswith("CASCADE_CONSOLE_")}
    env |= {
        "CASCADE_CONSOLE_DATA_DIR": str(args.data_dir),
        "CASCADE_CONSOLE_ARTIFACTS": str(args.artifacts),
        "CASCADE_CONSOLE_BUNDLE": args.bundle,
    }
    try:
        console = launch.start(args.run_dir, args.console_host, args.console_port, env)
    except launch.ConsoleError as error:
        print(f"cascade up: {error}", file=sys.stderr)
        stack.down(args.run_dir, quiet=True)
        sys.exit(1)
    print(f"  console  {console.url}  pid {console.pid}  log {console.log}", flush=True)


def _down(args: argparse.Namespace) -> None:
    from app import stack
    from app.console import launch

    launch.stop(args.run_dir)
    stack.down(args.run_dir, grace_s=args.grace)


def _delegate(module_name: str, function: str):
    def run(args: argparse.Namespace) -> None:
        code = getattr(importlib.import_module(module_name), function)(args.options)
        if code:
            sys.exit(code)

    return run


def _recommend(args: argparse.Namespace) -> None:
    """The gateway's CLI, told how to find the titles of the stack that answers (its stack file)."""
    from app.stack import served_dataset
    from gateway.cli import recommend_main

    code = recommend_main(args.options, served_dataset)
    if code:
        sys.exit(code)


def _add_stack_commands(commands) -> None:
    up = commands.add_parser(
        "up",
        help="start the local stack: five services on loopback ports, trained first if needed",
        description="Train what is missing (data, every stage's model), start recall, prerank, "
        "rank, rerank and the gateway as separate processes on 127.0.0.1, wait until every "
        "health check is SERVING and print where each listens. `cascade down` stops them.",
    )
    up.add_argument("--dataset", default="ml-100k", help="ml-100k, synthetic or an import")
    up.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    up.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="where bundles live; the bundle is trained when missing (default: artifacts)",
    )
    up.add_argument("--bundle", default="current", help="bundle under ARTIFACTS to serve")
    up.add_argument(
        "--profile",
        help="the named configuration every service serves (deploy/profiles/NAME.toml, or a "
        "file); default: the dataset's default profile (`cascade settings` prints it)",
    )
    up.add_argument(
        "--store",
        default="memory",
        help="online store: memory (each process its own, the default), redis (start a "
        "redis-server on 127.0.0.1:6380, shared by every service; `cascade down` stops it) or "
        "the redis://host:port/db URL of a running server",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=GATEWAY.port,
        help="gateway port; recall, prerank, rank, rerank take the next four; 0 = free ports",
    )
    up.add_argument(
        "--metrics-base-port",
        type=int,
        default=GATEWAY.metrics_port,
        help="gateway metrics port; the stages take the next four",
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health")
    up.add_argument(
        "--restart",
        action="store_true",
        help="stop a stack already running from RUN_DIR and start a new one (by default it is "
        "left running and `up` only says so)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on the gateway, mutual TLS between the services (certificates made under "
        "RUN_DIR/certs; ask with `cascade recommend --tls-ca RUN_DIR/certs/ca.pem`)",
    )
    up.add_argument(
        "--no-supervise",
        action="store_true",
        help="no background supervisor (by default a service that dies is restarted, with "
        "backoff; see .cascade/supervisor.log)",
    )
    up.add_argument(
        "--console",
        action="store_true",
        help="also start the read-only web console (explain a user, items, the stack, "
        "experiments); its URL is printed with the services",
    )
    up.add_argument(
        "--console-host",
        default="127.0.0.1",
        help="the console's address (loopback by default; any other needs CASCADE_CONSOLE_TOKEN)",
    )
    up.add_argument("--console-port", type=int, default=8090, help="0 = a free port")
    _stack_options(up)
    up.set_defaults(run=_up)
    down = commands.add_parser("down", help="stop the local stack started by `cascade up`")
    down.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    _stack_options(down)
    down.set_defaults(run=_down)
    # The gateway's client commands own their options (`cascade recommend --help`).
    recommend = commands.add_parser(
        "recommend",
        help="ask the running gateway for a user's recommendations",
        add_help=False,
    )
    recommend.set_defaults(run=_recommend, delegate=True)
    feedback = commands.add_parser(
        "feedback", help="send a user event (play, like, ...) to the gateway", add_help=False
    )
    feedback.set_defaults(run=_delegate("gateway.cli", "feedback_main"), delegate=True)
    demo = commands.add_parser(
        "demo",
        help="end to end: train, start the stack, recommend, send feedback, show the change, stop",
    )
    demo.set_defaults(run=_delegate("app.demo", "main"), delegate=True)
    certs = commands.add_parser(
        "certs",
        help="make a local CA and the server and client certificates for TLS / mutual TLS",
        add_help=False,
    )
    certs.set_defaults(run=_delegate("cascade.certs", "main"), delegate=True)
    simulate = commands.add_parser(
        "simulate",
        help="simulated users of the synthetic world against the cascade and reference arms",
        add_help=False,
    )
    simulate.set_defaults(run=_delegate("app.loop", "main"), delegate=True)
    settings = commands.add_parser(
        "settings",
        help="print each resolved setting of the services and the layer it came from",
        add_help=False,
    )
    settings.set_defaults(run=_delegate("app.settings", "show"), delegate=True)


def _add_stage_command(commands, verb: str, help_text: str, run, extra: tuple[str, ...] = ()):
    parser = commands.add_parser(verb, help=help_text, description=help_text)
    stages = (*ENTRY_POINTS[verb], *extra)
    parser.add_argument("stage", choices=stages, help="which stage")
    parser.add_argument(
        "options", nargs=argparse.REMAINDER, help="passed to the stage (see its --help)"
    )
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Cascade: a multi-stage recommender (recall -> pre-rank -> rank -> rerank) "
        "served as gRPC microservices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    data = commands.add_parser(
        "data",
        help="fetch MovieLens-100K and/or generate the synthetic world, or import your own data",
        description="Prepare a data source in the common schema under DATA_DIR/<source>/. "
        "`cascade data import --name NAME ...` imports your own files (see its --help). "
        "ml-100k is downloaded offline-style from the recbole==1.2.1 wheel (never installed); "
        "synthetic is a seeded UGC music-platform world with a known ground truth.",
    )
    data.add_argument(
        "action", nargs="?", choices=("import",), help="import: your own data (import --help)"
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
    world = SyntheticConfig  # the one set of the world's defaults
    data.add_argument("--users", type=int, default=world.n_users, help="synthetic: number of users")
    data.add_argument("--items", type=int, default=world.n_items, help="synthetic: number of items")
    data.add_argument(
        "--impressions-per-user",
        type=float,
        default=world.impressions_per_user,
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
        default=["ml-100k"],
        help="datasets to evaluate: ml-100k, synthetic or imported ones (default: ml-100k)",
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
        help="JSON file for the table; other datasets' rows in it are kept (default: "
        "DATA_DIR/run/baselines.json; `make baselines` writes the committed results/)",
    )
    baselines.set_defaults(run=_baselines)

    _add_stack_commands(commands)
    _add_stage_command(commands, "train", _TRAIN_HELP, _train, extra=("all",))
    _add_stage_command(
        commands,
        "serve",
        "run one stage's gRPC server (health, TLS, metrics port, graceful SIGTERM)",
        _stage_command,
    )
    _add_stage_command(
        commands,
        "eval",
        "write a stage's offline report (JSON + Markdown) under data/run/<stage> or --out",
        _stage_command,
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["data", "import"]:  # its own parser, so `data import --help` is its help
        from cascade.data.import_cli import main as import_main

        sys.exit(import_main(argv[2:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "delegate", False) or getattr(args, "action", None) == "import":
        args.options = extra  # recommend, feedback, demo, data import: their module parses
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.run(args)
    except DataError as error:
        print(f"cascade {args.command}: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
