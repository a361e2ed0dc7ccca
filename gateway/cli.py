"""`cascade recommend` and `cascade feedback`: the gateway from the command line.

    cascade recommend --user 196 [--count 10] [--debug] [--target 127.0.0.1:50050]
    cascade feedback --user 196 --item 50 [--type play]
    cascade recommend --user-key alice                 # the client's own (external) ids
    cascade feedback --user-key alice --item-key song-9 --type like

Titles come from the dataset of the stack that answers: the one `cascade up` recorded in --run-dir
when its gateway is the target, or --dataset NAME (under --data-dir); otherwise "?". The API
token comes from --token or CASCADE_GATEWAY_API_TOKEN; a TLS gateway's CA from --tls-ca or
CASCADE_TLS_CA (the local stack started with `cascade up --tls` writes it under .cascade/certs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc

from cascade.candidates import CHANNELS, channels_of
from cascade.client import field_violations
from cascade.data import DataError, load_dataset
from gateway.client import EVENT_TYPES, CascadeClient
from gateway.settings import GatewaySettings

INT64_MAX = 2**63 - 1  # ids are int64 on the wire
TOKEN_ENV = "CASCADE_GATEWAY_API_TOKEN"
START_HINT = "start it with `make up`"  # the README's command for the local stack


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else a usage error (exit 2) naming the range,
    so a value the wire cannot carry never reaches the client as a traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default="127.0.0.1:50050",
        help="the gateway's address host:port (default: 127.0.0.1:50050, the local stack's)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"the gateway's API token (default: env {TOKEN_ENV}; none when unset)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for the answer (default: 2.0)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("CASCADE_TLS_CA") or None,
        help="CA certificate of a TLS gateway (env CASCADE_TLS_CA); plaintext without",
    )


# (target, run dir) -> the dataset and data folder of the stack serving at target, if known: the
# application layer's reader of the stack file (app.stack.served_dataset).
ServedDataset = Callable[[str, Path], "tuple[str, Path] | None"]


def load_titles(name: str, data_dir: Path) -> dict[int, str]:
    """Item titles by id from dataset `name`; {} when it cannot be read."""
    try:
        items = load_dataset(name, data_dir).items
    except (DataError, OSError, KeyError):
        return {}
    return dict(zip(items["item_id"].tolist(), items["title"].tolist(), strict=True))


# One line under every page table: what its columns mean.
LEGEND = (
    "score: the last stage's score; found by: the recall channels that proposed the item "
    f"({', '.join(CHANNELS.values())})"
)


def plural(count: int, noun: str) -> str:
    """`1 item`, `2 items`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def page_table(response, titles: Mapping[int, str]) -> list[str]:
    """A recommended page as table lines under a header: rank, item (its key when the answer
    carries keys), score, title ("?" when unknown) and the channels that found it; a slot
    the traffic pool filled (gateway/pool.py) says so after them."""
    ids = [int(item) for item in response.items.item_ids]
    scores = list(response.items.scores) or [None] * len(ids)
    masks = list(response.items.channel_masks) or [0] * len(ids)
    keys = list(response.item_keys) or [str(item) for item in ids]
    width = max([len("item"), *map(len, keys)])
    lines = [f"{'#':>3}  {'item':>{width}} {'score':>9}  {'title':<50} found by"]
    explored = set(getattr(response, "explored_positions", ()))
    for position, (item, key, score, mask) in enumerate(
        zip(ids, keys, scores, masks, strict=True), 1
    ):
        shown = f"{score:9.4f}" if score is not None else " " * 9
        title = titles.get(item, "?")
        found_by = ",".join(channels_of(mask)) + (" [explored]" if position - 1 in explored else "")
        lines.append(f"{position:>3}. {key:>{width}} {shown}  {title:<50.50} {found_by}")
    return lines


RECOMMEND_HELP = "ask the running gateway for a user's recommendations"
FEEDBACK_HELP = "send a user's events (play, like, ...) on items to the running gateway"


def recommend_main(
    argv: Sequence[str] | None = None, served_dataset: ServedDataset | None = None
) -> int:
    parser = argparse.ArgumentParser(
        prog="cascade recommend",
        description=f"{RECOMMEND_HELP}. Each line: rank, item, score, title and the recall "
        "channels that found the item.",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--user",
        type=bounded_int(0, INT64_MAX),
        help="the platform's user id, 0..2^63-1 (0 = anonymous)",
    )
    who.add_argument("--user-key", help="the user's external id (e.g. alice)")
    most = GatewaySettings.max_count
    parser.add_argument(
        "--count",
        type=bounded_int(1, most),
        default=GatewaySettings.default_count,
        help=f"how many items, 1..{most} (the gateway's max_count; "
        f"default: {GatewaySettings.default_count})",
    )
    parser.add_argument("--debug", action="store_true", help="print the per-stage trace")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".cascade"),
        help="the local stack's folder: its titles come from the dataset it records when its "
        "gateway is the target (default: .cascade)",
    )
    parser.add_argument(
        "--dataset", help='titles from this dataset instead (under --data-dir); else "?"'
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where --dataset lives (default: data)",
    )
    _common(parser)
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    with CascadeClient(args.target, token, args.timeout, args.tls_ca) as client:
        try:
            user = args.user_key if args.user_key is not None else args.user
            response = client.recommend(user, args.count, debug=args.debug)
        except grpc.RpcError as error:
            return _failed("recommend", error, args.target, token, args.timeout)
    served = served_dataset(args.target, args.run_dir) if served_dataset else None
    if args.dataset is not None:
        served = (args.dataset, args.data_dir)
    titles = load_titles(*served) if served else {}
    degraded = f"  degraded: {', '.join(response.degraded_stages)}" if response.degraded else ""
    arm = f"  arm: {response.arm}" if args.debug and response.arm else ""
    print(f"user {user}: {plural(len(response.items.item_ids), 'item')}{degraded}{arm}")
    print("\n".join(page_table(response, titles)))
    print(LEGEND)
    for trace in response.trace:
        mix = " ".join(f"{k}={v}" for k, v in sorted(trace.channel_counts.items()))
        note = f" DEGRADED ({trace.degraded_reason})" if trace.degraded else ""
        print(
            f"  {trace.stage:<8} {trace.latency_ms:7.2f} ms  {trace.candidates_in:>5} -> "
            f"{trace.candidates_out:<5} model {trace.model_version or '-'}{note} {mix}"
        )
    return 0


def feedback_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cascade feedback",
        description=f"{FEEDBACK_HELP}: one event per item, all of the same type. Prints how many "
        "the gateway accepted and why any was rejected.",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--user", type=bounded_int(1, INT64_MAX), help="the platform's user id, 1..2^63-1"
    )
    who.add_argument("--user-key", help="the user's external id (e.g. alice)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--item",
        type=bounded_int(1, INT64_MAX),
        nargs="+",
        help="one or more item ids, 1..2^63-1",
    )
    what.add_argument("--item-key", nargs="+", help="one or more external item ids (e.g. song-9)")
    parser.add_argument(
        "--type",
        default="play",
        choices=sorted(EVENT_TYPES),
        help="what the user did (default: play)",
    )
    _common(parser)
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    with CascadeClient(args.target, token, args.timeout, args.tls_ca) as client:
        try:
            user = args.user_key if args.user_key is not None else args.user
            items = args.item_key if args.item_key is not None else args.item
            reply = client.feedback([(user, item, args.type) for item in items])
        except grpc.RpcError as error:
            return _failed("feedback", error, args.target, token, args.timeout)
    print(f"accepted {reply.accepted} of {len(items)}")
    for rejected in reply.rejected:
        print(
            f"  rejected event {rejected.index} (item {items[rejected.index]}): {rejected.reason}"
        )
    return 0 if not reply.rejected else 1


def _failed(
    verb: str, error: grpc.RpcError, target: str, token: str | None, timeout_s: float
) -> int:
    """Prints why the call failed, with what to do about it where the cause is the caller's
    setup (no stack running, no or a wrong token, a short deadline); returns the exit code 1."""
    code = error.code() if isinstance(error, grpc.Call) else None
    hints = {
        grpc.StatusCode.UNAVAILABLE: f"the gateway at {target} is not reachable; {START_HINT}",
        grpc.StatusCode.UNAUTHENTICATED: (
            f"the gateway at {target} refused the API token given by --token or {TOKEN_ENV}"
            if token
            else f"the gateway at {target} needs an API token: pass --token TOKEN or set "
            f"{TOKEN_ENV}"
        ),
        grpc.StatusCode.DEADLINE_EXCEEDED: (
            f"no answer from the gateway at {target} within {timeout_s:g} s (--timeout)"
        ),
    }
    hint = hints.get(code) if code is not None else None
    if hint is not None:
        print(f"cascade {verb}: {hint}", file=sys.stderr)
        return 1
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    fields = field_violations(error)
    print(f"error: {code.name if code else 'ERROR'}: {details}", file=sys.stderr)
    for name, description in fields.items():
        print(f"  {name}: {description}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(recommend_main())
