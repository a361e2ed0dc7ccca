"""`cascade recommend` and `cascade feedback`: the gateway from the command line.

    cascade recommend --user 196 [--count 10] [--debug] [--target 127.0.0.1:50050]
    cascade feedback --user 196 --item 50 [--type play]
    cascade recommend --user-key alice                 # the client's own (external) ids
    cascade feedback --user-key alice --item-key song-9 --type like

Titles come from the dataset the served bundle names (--artifacts, --bundle, --data-dir). The API
token comes from --token or CASCADE_GATEWAY_API_TOKEN; a TLS gateway's CA from --tls-ca or
CASCADE_TLS_CA (the local stack started with `cascade up --tls` writes it under .cascade/certs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from cascade.artifacts import ArtifactError, Bundle
from cascade.candidates import channels_of
from cascade.client import field_violations
from cascade.data import DataError, load_dataset
from gateway.client import EVENT_TYPES, CascadeClient


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:50050", help="the gateway's address")
    parser.add_argument("--token", default=None, help="API token (env CASCADE_GATEWAY_API_TOKEN)")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline in seconds")
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=os.environ.get("CASCADE_TLS_CA") or None,
        help="CA certificate of a TLS gateway (env CASCADE_TLS_CA); plaintext without",
    )


def load_titles(artifacts: Path, bundle: str, data_dir: Path) -> dict[int, str]:
    """Item titles by id from the bundle's dataset; {} when it cannot be read."""
    try:
        name = Bundle.open(artifacts, bundle).component("recall")["dataset"]
        items = load_dataset(name, data_dir).items
    except (ArtifactError, DataError, OSError, KeyError):
        return {}
    return dict(zip(items["item_id"].tolist(), items["title"].tolist(), strict=True))


def recommend_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade recommend", description=__doc__.splitlines()[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="the platform's user id (0 = anonymous)")
    who.add_argument("--user-key", help="the user's external id (e.g. alice)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--debug", action="store_true", help="print the per-stage trace")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--bundle", default="current")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    _common(parser)
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("CASCADE_GATEWAY_API_TOKEN") or None
    with CascadeClient(args.target, token, args.timeout, args.tls_ca) as client:
        try:
            user = args.user_key if args.user_key is not None else args.user
            response = client.recommend(user, max(args.count, 0), debug=args.debug)
        except grpc.RpcError as error:
            return _failed(error)
    titles = load_titles(args.artifacts, args.bundle, args.data_dir)
    degraded = f"  degraded: {', '.join(response.degraded_stages)}" if response.degraded else ""
    arm = f"  arm: {response.arm}" if args.debug and response.arm else ""
    print(f"user {user}: {len(response.items.item_ids)} items{degraded}{arm}")
    scores = np.asarray(response.items.scores) if response.items.scores else None
    masks = list(response.items.channel_masks) or [0] * len(response.items.item_ids)
    keys = list(response.item_keys) or [str(i) for i in response.items.item_ids]
    width = max((len(k) for k in keys), default=6)
    for position, (item, mask) in enumerate(zip(response.items.item_ids, masks, strict=True)):
        score = f"{scores[position]:9.4f}" if scores is not None else " " * 9
        title = titles.get(int(item), "?")
        key = keys[position]
        print(f"{position + 1:>3}. {key:>{width}} {score}  {title:<50.50} "
              f"{','.join(channels_of(mask))}")  # fmt: skip
    for trace in response.trace:
        mix = " ".join(f"{k}={v}" for k, v in sorted(trace.channel_counts.items()))
        note = f" DEGRADED ({trace.degraded_reason})" if trace.degraded else ""
        print(
            f"  {trace.stage:<8} {trace.latency_ms:7.2f} ms  {trace.candidates_in:>5} -> "
            f"{trace.candidates_out:<5} model {trace.model_version or '-'}{note} {mix}"
        )
    return 0


def feedback_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade feedback", description=__doc__.splitlines()[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="the platform's user id")
    who.add_argument("--user-key", help="the user's external id (e.g. alice)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--item", type=int, nargs="+", help="one or more item ids")
    what.add_argument("--item-key", nargs="+", help="one or more external item ids (e.g. song-9)")
    parser.add_argument("--type", default="play", choices=sorted(EVENT_TYPES))
    _common(parser)
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("CASCADE_GATEWAY_API_TOKEN") or None
    with CascadeClient(args.target, token, args.timeout, args.tls_ca) as client:
        try:
            user = args.user_key if args.user_key is not None else args.user
            items = args.item_key if args.item_key is not None else args.item
            reply = client.feedback([(user, item, args.type) for item in items])
        except grpc.RpcError as error:
            return _failed(error)
    print(f"accepted {reply.accepted} of {len(items)}")
    for rejected in reply.rejected:
        print(f"  rejected event {rejected.index} (item {items[rejected.index]}): "
              f"{rejected.reason}")  # fmt: skip
    return 0 if not reply.rejected else 1


def _failed(error: grpc.RpcError) -> int:
    code = error.code().name if isinstance(error, grpc.Call) else "ERROR"
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    fields = field_violations(error)
    print(f"error: {code}: {details}", file=sys.stderr)
    for name, description in fields.items():
        print(f"  {name}: {description}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(recommend_main())
