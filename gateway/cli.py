"""`cascade recommend` and `cascade feedback`: the gateway from the command line.

    cascade recommend --user 196 [--count 10] [--debug] [--target 127.0.0.1:50050]
    cascade feedback --user 196 --item 50 [--type play]

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
    parser.add_argument("--user", type=int, required=True, help="user id (0 = anonymous)")
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
            response = client.recommend(args.user, max(args.count, 0), debug=args.debug)
        except grpc.RpcError as error:
            return _failed(error)
    titles = load_titles(args.artifacts, args.bundle, args.data_dir)
    degraded = f"  degraded: {', '.join(response.degraded_stages)}" if response.degraded else ""
    print(f"user {args.user}: {len(response.items.item_ids)} items{degraded}")
    scores = np.asarray(response.items.scores) if response.items.scores else None
    masks = list(response.items.channel_masks) or [0] * len(response.items.item_ids)
    for position, (item, mask) in enumerate(zip(response.items.item_ids, masks, strict=True)):
        score = f"{scores[position]:9.4f}" if scores is not None else " " * 9
        title = titles.get(int(item), "?")
        print(f"{position + 1:>3}. {item:>6} {score}  {title:<50.50} {','.join(channels_of(mask))}")
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
    parser.add_argument("--user", type=int, required=True)
    parser.add_argument("--item", type=int, required=True, nargs="+", help="one or more item ids")
    parser.add_argument("--type", default="play", choices=sorted(EVENT_TYPES))
    _common(parser)
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("CASCADE_GATEWAY_API_TOKEN") or None
    with CascadeClient(args.target, token, args.timeout, args.tls_ca) as client:
        try:
            reply = client.feedback([(args.user, item, args.type) for item in args.item])
        except grpc.RpcError as error:
            return _failed(error)
    print(f"accepted {reply.accepted} of {len(args.item)}")
    for rejected in reply.rejected:
        print(f"  rejected event {rejected.index} (item {args.item[rejected.index]}): "
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
