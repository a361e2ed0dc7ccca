"""An upload that must survive a stage's crash (deploy/compose_smoke.sh runs it around a kill -9
of pre-rank and rank): `add` uploads an item through the gateway with the API token and prints
its id; `check` asks pre-rank and rank directly whether they know it (0 unknown items: it is
scored from its creator and categories, so it can reach a page).

    CASCADE_GATEWAY_API_TOKEN=... python -m deploy.compose_upload add
    python -m deploy.compose_upload check --item 1683
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from cascade.v1 import common_pb2, prerank_pb2, prerank_pb2_grpc, rank_pb2, rank_pb2_grpc
from deploy.compose_check import TOKEN_ENV
from gateway.client import CascadeClient

ITEM = {"item_key": "compose-upload", "creator_id": 2, "categories": [1, 3]}
USER = 5


def add(gateway: str, token: str) -> int:
    """Uploads ITEM (again: the same key keeps its id); returns its id."""
    with CascadeClient(gateway, timeout_s=5.0, token=token) as client:
        (item_id,) = client.add_items([ITEM]).item_ids
    return int(item_id)


def unknown(prerank: str, rank: str, item_id: int) -> dict[str, int]:
    """How many of [item_id, 1, 2] pre-rank and rank score as out of their catalogue."""
    candidates = common_pb2.CandidateList(item_ids=[item_id, 1, 2], scores=[0, 0, 0])
    user = common_pb2.UserContext(user_id=USER)
    with grpc.insecure_channel(prerank) as channel:
        preranked = prerank_pb2_grpc.PrerankStub(channel).Prerank(
            prerank_pb2.PrerankRequest(user=user, candidates=candidates, count=3), timeout=5
        )
    with grpc.insecure_channel(rank) as channel:
        ranked = rank_pb2_grpc.RankStub(channel).Rank(
            rank_pb2.RankRequest(user=user, candidates=candidates), timeout=5
        )
    return {"prerank": preranked.unknown_items, "rank": ranked.unknown_items}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["add", "check"])
    parser.add_argument("--item", type=int, help="the id `add` printed (check)")
    parser.add_argument("--gateway", default="127.0.0.1:50050")
    parser.add_argument("--prerank", default="127.0.0.1:50052")
    parser.add_argument("--rank", default="127.0.0.1:50053")
    args = parser.parse_args(argv)
    if args.action == "add":
        print(add(args.gateway, os.environ.get(TOKEN_ENV, "")))
        return 0
    if args.item is None:
        parser.error("check needs --item")
    found = unknown(args.prerank, args.rank, args.item)
    known = all(n == 0 for n in found.values())
    print(f"upload {args.item}: unknown items per stage {found}: {'known' if known else 'LOST'}")
    return 0 if known else 1


if __name__ == "__main__":
    sys.exit(main())
