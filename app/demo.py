"""`cascade demo`: the product end to end on MovieLens-100K, from nothing to a changed answer.

Prepares the data and trains every stage when missing, starts the five services, asks the gateway
for a few users' recommendations (titles shown), sends a play as feedback and shows that the next
answer changed. The stack is stopped on every exit path.

    python -m app.demo [--users 196 186 22]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from app import stack
from cascade.data import DataError, dataset_folder, load_dataset
from cascade.progress import Progress
from cascade.topology import DEFAULT_METRICS_PORTS, ports_from
from cascade.v1 import gateway_pb2
from gateway.cli import LEGEND, page_table, plural


def show(response, titles: Mapping[int, str], header: str) -> list[int]:
    """Prints one answer as a table under a header line and returns its item ids."""
    degraded = f"  (degraded: {', '.join(response.degraded_stages)})" if response.degraded else ""
    print(f"\n{header}{degraded}")
    print("\n".join(f"  {line}" for line in page_table(response, titles)))
    return [int(item) for item in response.items.item_ids]


def run_demo(client, titles: Mapping[int, str], users: Sequence[int], count: int) -> bool:
    """Recommends for each user, then plays the first user's top item and asks again. True when
    the second answer differs from the first (it must: the played item is now consumed)."""
    print(LEGEND)
    first: dict[int, list[int]] = {}
    for user in users:
        response = client.recommend(user, count=count)
        first[user] = show(response, titles, f"== recommendations for user {user}")
    user = users[0]
    played = first[user][0]
    event = gateway_pb2.Event(user_id=user, item_id=played, type=gateway_pb2.EVENT_TYPE_PLAY)
    reply = client.feedback([event])
    accepted = getattr(reply, "accepted", reply)
    title = titles.get(played, "?")
    print(f"\n== feedback: user {user} played {played} ({title}); accepted {accepted}")
    after = show(client.recommend(user, count=count), titles, f"== user {user} again")
    gone = [item for item in first[user] if item not in after]
    new = [item for item in after if item not in first[user]]
    print(
        f"\nchanged: {plural(len(gone), 'item')} left the list {gone}, "
        f"{plural(len(new), 'new item')} {new}"
    )
    if played in after:
        print(f"error: the played item {played} is still recommended", file=sys.stderr)
    return after != first[user] and played not in after


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        default="ml-100k",
        help="the dataset to train on and serve: ml-100k, synthetic or an imported one "
        "(default: ml-100k)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="where datasets live (default: data)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="where bundles live; artifacts/current is trained when missing (default: artifacts)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".cascade/demo"),
        help="the demo stack's pid file and logs (default: .cascade/demo)",
    )
    parser.add_argument(
        "--users",
        type=int,
        nargs="+",
        help="users to recommend for; the first one plays its top item (default: 196 186 22 "
        "on ml-100k, else the dataset's first three users)",
    )
    parser.add_argument(
        "--count", type=int, default=10, help="items per recommendation (default: 10)"
    )
    # Free ports by default, so the demo runs beside a stack that `make up` left running.
    parser.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="gateway port, stages the next four (default: 0 = free ports)",
    )
    args = parser.parse_args(argv)
    try:
        dataset_folder(args.dataset, args.data_dir)
    except DataError as error:
        parser.error(str(error))
    from gateway.client import CascadeClient  # the gateway package is the SDK's home

    ports = ports_from(args.base_port)
    metrics = {n: args.base_port and port for n, port in DEFAULT_METRICS_PORTS.items()}
    # Each step prints output of its own, so the bar is drawn as one line per step.
    steps = Progress("demo", 4, "steps", lines=True)
    try:
        stack.ensure_bundle(args.artifacts, args.data_dir, args.dataset)  # data, then every model
        steps.update(step="data and bundle ready")
        dataset = load_dataset(args.dataset, args.data_dir)
        items = dataset.items
        if args.users is None:
            users = dataset.users["user_id"].tolist()
            args.users = [196, 186, 22] if args.dataset == "ml-100k" else users[:3]
        titles = dict(zip(items["item_id"].tolist(), items["title"].tolist(), strict=True))
        with stack.running_stack(
            args.run_dir,
            artifacts=args.artifacts,
            data_dir=args.data_dir,
            dataset=args.dataset,
            ports=ports,
            metrics_ports=metrics,
            quiet=False,
        ) as running:
            steps.update(step="stack started")
            client = CascadeClient(running.address("gateway"), timeout_s=5.0)
            changed = run_demo(client, titles, args.users, args.count)
            steps.update(step="recommended, played, asked again")
    except stack.StackError as error:
        print(f"cascade demo: {error}", file=sys.stderr)
        return 1
    print("stack stopped")
    steps.update(step="stack stopped")
    steps.close()
    return 0 if changed else 1


if __name__ == "__main__":
    sys.exit(main())
