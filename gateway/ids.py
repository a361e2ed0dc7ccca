"""The gateway's ids: a client's external user and item keys <-> the platform's dense ids.

The wire carries both. `user_id` / `item_id` (int64) are the platform's ids, as before; the string
fields `user_key` / `item_key` are the client's own ids, mapped here with cascade.ids.IdMap from the
dataset's saved maps (data/NAME/ids/, written by `cascade data import`; without them a dataset's
ids are their own keys). Recommend looks a user key up (unknown = anonymous); Feedback assigns a
dense id to a key seen for the first time, up to the capacity; answers carry the items' keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from cascade.data import DataError
from cascade.ids import IdMap, IdSpaceFull, external_key
from cascade.v1 import gateway_pb2


class IdProblem(ValueError):
    """A request's ids are unusable: `field` names the wire field, the message says why."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class GatewayIds:
    """One dataset's user and item id maps, as the gateway uses them."""

    def __init__(self, users: IdMap, items: IdMap):
        self.users = users
        self.items = items

    @classmethod
    def for_dataset(
        cls, data_dir: Path, dataset: str, n_users: int, n_items: int, new_users: int
    ) -> GatewayIds:
        """The maps saved under data_dir/dataset/ids/ (or the identity over the dataset's ids),
        with room for `new_users` users beyond the dataset's."""
        folder = Path(data_dir) / dataset / "ids"
        try:
            users = IdMap.for_dataset(folder / "users.parquet", n_users, n_users + new_users)
            items = IdMap.for_dataset(folder / "items.parquet", n_items, n_items)
        except (OSError, ValueError, pa.ArrowException) as error:
            raise DataError(
                f"{folder} does not match the dataset ({error}): import it again "
                f"with `cascade data import --name {dataset} --force ...`"
            ) from None
        return cls(users, items)

    def with_items(self, other: GatewayIds) -> GatewayIds:
        """A newly loaded catalog's item map, keeping the users this gateway already assigned."""
        return GatewayIds(self.users, other.items)

    def recommend_user(self, request: gateway_pb2.RecommendRequest) -> int:
        """The dense user id of a Recommend request: user_id as it is, or user_key looked up
        (0, anonymous, when the key was never seen)."""
        if not request.user_key:
            return request.user_id
        if request.user_id:
            raise IdProblem("user_key", "set user_key or user_id, not both")
        return int(self.users.lookup([_key(request.user_key, "user_key")])[0])

    def item_keys(self, item_ids: Sequence[int]) -> list[str]:
        """The external key of each recommended item, in order ("" for an id the map lacks,
        which only a stage answering outside the catalog could produce)."""
        n = len(self.items)
        return [self.items.external([i])[0] if 0 < i <= n else "" for i in map(int, item_ids)]

    def feedback_events(
        self, events: Sequence[gateway_pb2.Event]
    ) -> tuple[list[gateway_pb2.Event], dict[int, str]]:
        """The events with user_key / item_key resolved to dense ids, and {index: reason} for
        those whose keys cannot be (their copies carry id 0, which event checks reject)."""
        out: list[gateway_pb2.Event] = []
        rejected: dict[int, str] = {}
        new_users: dict[int, str] = {}
        for index, event in enumerate(events):
            if not event.user_key and not event.item_key:
                out.append(event)
                continue
            copy = gateway_pb2.Event()
            copy.CopyFrom(event)
            copy.user_key, copy.item_key = "", ""
            try:
                if event.item_key:
                    if event.item_id:
                        raise IdProblem("item_key", "set item_key or item_id, not both")
                    copy.item_id = int(self.items.lookup([_key(event.item_key, "item_key")])[0])
                    if copy.item_id == 0:
                        raise IdProblem("item_key", f"{event.item_key!r} is not in the catalog")
                if event.user_key:
                    if event.user_id:
                        raise IdProblem("user_key", "set user_key or user_id, not both")
                    new_users[index] = _key(event.user_key, "user_key")
            except IdProblem as problem:
                rejected[index] = f"{problem.field}: {problem}"
                copy.user_id, copy.item_id = 0, 0
            out.append(copy)
        for index, dense in self._assign(new_users, rejected).items():
            out[index].user_id = dense
        return out, rejected

    def _assign(self, keys: dict[int, str], rejected: dict[int, str]) -> dict[int, int]:
        """Dense ids for the events' user keys, new ones added; when the map is full, the events
        of the keys that do not fit are rejected (and the others still recorded)."""
        if not keys:
            return {}
        try:
            dense = self.users.assign(list(keys.values()))
            return dict(zip(keys, dense.tolist(), strict=True))
        except IdSpaceFull:
            pass
        out = {}
        for index, key in keys.items():
            try:
                out[index] = int(self.users.assign([key])[0])
            except IdSpaceFull:
                rejected[index] = f"user_key: no room for a new user ({self.users.capacity} ids)"
        return out


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
