"""The gateway's ids: a client's external user and item keys <-> the platform's dense ids.

A client names a user by `user_id` (int64) or `user_key` (string): both are the client's own ids
(an int and its decimal text are one id), mapped here with cascade.ids.IdMap from the dataset's
saved maps (data/NAME/ids/, written by `cascade data import`; without them a dataset's dense ids
are their own keys) plus the users first seen online. Recommend looks the user up (unknown =
anonymous); Feedback assigns a dense id to a user seen for the first time, up to the capacity.
Items: `item_key` maps to the catalog's ids (uploads, gateway/uploads.py, add keys); answers carry
each item's key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from cascade.data import DataError
from cascade.ids import IdMap, external_key
from cascade.v1 import gateway_pb2


class IdProblem(ValueError):
    """A request's ids are unusable: `field` names the wire field, the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class GatewayIds:
    """One dataset's user and item id maps, as the gateway uses them. The user map also holds
    every user first seen online (restored from the event log at start)."""

    def __init__(self, users: IdMap, items: IdMap):
        self.users = users
        self.items = items

    @classmethod
    def for_dataset(
        cls,
        data_dir: Path,
        dataset: str,
        n_users: int,
        n_items: int,
        new_users: int,
        new_items: int = 0,
    ) -> GatewayIds:
        """The maps saved under data_dir/dataset/ids/ (or the identity over the dataset's ids),
        with room for `new_users` users and `new_items` uploaded items beyond the dataset's."""
        folder = Path(data_dir) / dataset / "ids"
        try:
            users = IdMap.for_dataset(folder / "users.parquet", n_users, n_users + new_users)
            items = IdMap.for_dataset(folder / "items.parquet", n_items, n_items + new_items)
        except (OSError, ValueError, pa.ArrowException) as error:
            raise DataError(
                f"{folder} does not match the dataset ({error}): import it again "
                f"with `cascade data import --name {dataset} --force ...`"
            ) from None
        return cls(users, items)

    def with_items(self, other: GatewayIds) -> GatewayIds:
        """A newly loaded catalog's item map, keeping the users this gateway already assigned."""
        return GatewayIds(self.users, other.items)

    def recommend_user(self, request: gateway_pb2.RecommendRequest) -> tuple[int, str]:
        """The dense id and external key of a Recommend's user (user_key, or user_id's decimal
        text); (0, "") for anonymous, (0, key) for a key never seen (served as anonymous)."""
        if request.user_key and request.user_id:
            raise IdProblem("user_key", "set user_key or user_id, not both")
        if request.user_key:
            key = _key(request.user_key, "user_key")
        elif request.user_id:
            key = external_key(request.user_id)
        else:
            return 0, ""
        return int(self.users.lookup([key])[0]), key

    def item_keys(self, item_ids: Sequence[int]) -> list[str]:
        """The external key of each recommended item, in order ("" for an id the map lacks,
        which only a stage answering outside the catalog could produce)."""
        n = len(self.items)
        return [self.items.external([i])[0] if 0 < i <= n else "" for i in map(int, item_ids)]

    def resolve_items(
        self, events: Sequence[gateway_pb2.Event]
    ) -> tuple[list[gateway_pb2.Event], dict[int, str]]:
        """The events with item_key resolved to the dense item_id, and {index: reason} for those
        whose keys cannot be (their copies carry item id 0, which event checks reject). A user_key
        stays on the event: users are assigned only once the event is valid (`user_keys`)."""
        out: list[gateway_pb2.Event] = []
        rejected: dict[int, str] = {}
        for index, event in enumerate(events):
            if not event.user_key and not event.item_key:
                out.append(event)
                continue
            copy = gateway_pb2.Event()
            copy.CopyFrom(event)
            try:
                if event.user_key:
                    if event.user_id:
                        raise IdProblem("user_key", "set user_key or user_id, not both")
                    _key(event.user_key, "user_key")
                if event.item_key:
                    if event.item_id:
                        raise IdProblem("item_key", "set item_key or item_id, not both")
                    copy.item_id = int(self.items.lookup([_key(event.item_key, "item_key")])[0])
                    if copy.item_id == 0:
                        raise IdProblem("item_key", f"{event.item_key!r} is not in the catalog")
            except IdProblem as problem:
                rejected[index] = f"{problem.field}: {problem}"
                copy.item_id = 0
            out.append(copy)
        return out, rejected

    @staticmethod
    def user_keys(events: Sequence[gateway_pb2.Event]) -> list[str]:
        """Each event's external user key: user_key, or user_id's decimal text."""
        return [e.user_key or external_key(e.user_id) for e in events]


def _key(value: str, field: str) -> str:
    try:
        return external_key(value)
    except ValueError as error:
        raise IdProblem(field, str(error)) from None


def merge_rejections(
    checked: list[tuple[int, str]], by_ids: dict[int, str]
) -> list[tuple[int, str]]:
    """Event-check rejections with the id reasons taking precedence for the same event."""
    merged = {index: reason for index, reason in checked} | by_ids
    return sorted(merged.items())
