"""`cascade demo`: the product end to end on MovieLens-100K, from nothing to a changed answer.

Prepares the data and trains every stage when missing, starts the five services, asks the gateway
for a few users' recommendations (titles shown), sends a play as feedback and shows that the next
answer changed. The stack is stopped on every exit path.

    python -m app.demo [--users 196 186 22]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app import stack
from cascade.candidates import channels_of
from cascade.data import load_dataset
from cascade.topology import DEFAULT_METRICS_PORTS, GATEWAY, ports_from
from cascade.v1 import gateway_pb2


def show(response, titles: np.ndarray, header: str) -> list[int]:
    """Prints one answer as a table and returns its item ids."""
    ids = list(response.items.item_ids)
    scores = list(response.items.scores) or [float("nan")] * len(ids)
    masks = list(response.items.channel_masks) or [0] * len(ids)
    degraded = f"  (degraded: {', '.join(response.degraded_stages)})" if response.degraded else ""
    print(f"\n{header}{degraded}")
    for rank, (item, score, mask) in enumerate(zip(ids, scores, masks, strict=True), 1):
        title = titles[item - 1] if 0 < item <= len(titles) else "?"
        found_by = ",".join(channels_of(int(mask)))
        print(f"  {rank:>2}. {item:>5}  {score:8.4f}  {title:<48.48} {found_by}")
    return ids


def run_demo(client, titles: np.ndarray, users: Sequence[int], count: int) -> bool:
    """Recommends for each user, then plays the first user's top item and asks again. True when
    the second answer differs from the first (it must: the played item is now consumed)."""
    first: dict[int, list[int]] = {}
    for user in users:
        response = client.recommend(user, count=count)
        first[user] = show(response, titles, f"== recommendations for user {user}")
    user = users[0]
    played = first[user][0]
    event = gateway_pb2.Event(user_id=user, item_id=played, type=gateway_pb2.EVENT_TYPE_PLAY)
    reply = client.feedback([event])
    accepted = getattr(reply, "accepted", reply)
    print(f"\n== feedback: user {user} played {played} ({titles[played - 1]}); accepted {accepted}")
    after = show(client.recommend(user, count=count), titles, f"== user {user} again")
    gone = [item for item in first[user] if item not in after]
    new = [item for item in after if item not in first[user]]
    print(f"\nchanged: {len(gone)} items left the list {gone}, {len(new)} new {new}")
    if played in after:
        print(f"error: the played item {played} is still recommended", file=sys.stderr)
    return after != first[user] and played not in after


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", choices=("ml-100k", "synthetic"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--run-dir", type=Path, default=Path(".cascade/demo"))
    parser.add_argument("--users", type=int, nargs="+", default=[196, 186, 22])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument(
        "--base-port",
        type=int,
        default=GATEWAY.port,
        help="gateway port, stages the next four; 0 = free",
    )
    args = parser.parse_args(argv)
    from gateway.client import CascadeClient  # the gateway package is the SDK's home

    ports = ports_from(args.base_port)
    metrics = {n: args.base_port and port for n, port in DEFAULT_METRICS_PORTS.items()}
    try:
        stack.ensure_bundle(args.artifacts, args.data_dir, args.dataset)  # data, then every model
        titles = np.asarray(load_dataset(args.dataset, args.data_dir).items["title"])
        with stack.running_stack(
            args.run_dir, artifacts=args.artifacts, data_dir=args.data_dir,
            dataset=args.dataset, ports=ports, metrics_ports=metrics, quiet=False,
        ) as running:  # fmt: skip
            client = CascadeClient(running.address("gateway"), timeout_s=5.0)
            changed = run_demo(client, titles, args.users, args.count)
    except stack.StackError as error:
        print(f"cascade demo: {error}", file=sys.stderr)
        return 1
    print("stack stopped")
    return 0 if changed else 1


if __name__ == "__main__":
    sys.exit(main())
