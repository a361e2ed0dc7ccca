"""The living catalogue and social graph: items uploaded and follows changed while serving.

The gateway validates uploads (cascade.v1.NewItem) and follow changes (FollowChange) with the
checks here, appends them to the event log (UPLOADS, FOLLOWS record kinds) and forwards them to
every stage's CatalogUpdates service, which checks them again (a stage never trusts its caller)
and applies them to its feature store. `LiveCatalog` is what a store holds of them: the items
added online (recall's fresh, profile and follow channels read them) and each user's follow
changes over the dataset's graph. A stage restart replays both from the log (`replay_catalog`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pyarrow as pa

from cascade.features import content_width
from cascade.server import invalid_argument
from cascade.v1 import catalog_pb2, catalog_pb2_grpc

if TYPE_CHECKING:
    from cascade.feature_store import FeatureStore

MAX_CATEGORIES = 6  # cascade.data.schema.MAX_CATEGORIES: the items table's categories width
MAX_FUTURE_S = 86_400  # as cascade.events: a time more than a day ahead is a client bug
# A stage grows its item tables to the largest id it is sent. The gateway assigns new ids after
# the catalogue's, at most its new_item_capacity (1,000,000 by default) of them: a stage refuses a
# larger id instead of allocating for it (a fuzzed 2^63 - 1 raised from numpy).
MAX_NEW_ITEMS = 1_000_000

UPLOADS = pa.schema(
    [
        ("item_id", pa.int64()),  # the dense id the gateway assigned
        ("item_key", pa.string()),  # the client's own id
        ("creator_id", pa.int64()),
        ("categories", pa.list_(pa.int32())),
        ("upload_ms", pa.int64()),  # when it was uploaded (the gateway's time if sent as 0)
        ("logged_ms", pa.int64()),
        ("content", pa.list_(pa.float32())),  # its content vector; empty when none was sent
    ]
)
FOLLOWS = pa.schema(
    [
        ("follower_id", pa.int64()),
        ("followee_id", pa.int64()),
        ("unfollow", pa.bool_()),
        ("timestamp_ms", pa.int64()),
        ("logged_ms", pa.int64()),
    ]
)


class CatalogProblem(ValueError):
    """An invalid upload or follow change; `field` names the wire field (items[2].creator_id)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_new_items(
    items: Sequence[catalog_pb2.NewItem],
    n_categories: int,
    now_ms: int | None,
    need_key: bool,
    max_item_id: int | None = None,
    content_dim: int = 0,
) -> None:
    """Raises CatalogProblem for the first invalid item: creator_id > 0, categories in
    1..n_categories-1 without repeats (at most 6), upload_time_ms in [0, now + 1 day] (no upper
    bound when `now_ms` is None: a stage takes the gateway's clock, which may be simulated),
    content empty or `content_dim` finite floats (the dataset's content width, 0 = none); at
    the gateway (`need_key`) an item_key, at a stage an item_id in 1..max_item_id."""
    late_ms = 2**62 if now_ms is None else now_ms + MAX_FUTURE_S * 1000
    for i, item in enumerate(items):
        where = f"items[{i}]"
        if need_key and not 0 < len(item.item_key) <= 256:
            raise CatalogProblem(f"{where}.item_key", "required, 1 to 256 characters")
        if not need_key and item.item_id <= 0:
            raise CatalogProblem(f"{where}.item_id", f"must be > 0, got {item.item_id}")
        if max_item_id is not None and item.item_id > max_item_id:
            raise CatalogProblem(
                f"{where}.item_id",
                f"at most {max_item_id} (the catalogue's ids and {MAX_NEW_ITEMS:,} new ones), "
                f"got {item.item_id}",
            )
        if item.creator_id <= 0:
            raise CatalogProblem(f"{where}.creator_id", f"must be > 0, got {item.creator_id}")
        categories = list(item.categories)
        if len(categories) > MAX_CATEGORIES or len(set(categories)) != len(categories):
            raise CatalogProblem(
                f"{where}.categories", f"at most {MAX_CATEGORIES}, no repeats; got {categories}"
            )
        outside = [c for c in categories if not 0 < c < n_categories]
        if outside:
            raise CatalogProblem(
                f"{where}.categories", f"{outside} outside 1..{n_categories - 1} (the dataset's)"
            )
        if not 0 <= item.upload_time_ms <= late_ms:
            raise CatalogProblem(
                f"{where}.upload_time_ms",
                f"must be >= 0 (0 = now) and at most a day ahead, got {item.upload_time_ms}",
            )
        if len(item.content) not in (0, content_dim):
            expected = f"{content_dim} values or none" if content_dim else "none"
            raise CatalogProblem(
                f"{where}.content",
                f"{len(item.content)} values; this catalogue's items take {expected}",
            )
        if len(item.content) and not np.isfinite(np.asarray(item.content, np.float32)).all():
            raise CatalogProblem(f"{where}.content", "must be finite numbers")


def check_follow_changes(changes: Sequence[catalog_pb2.FollowChange], now_ms: int | None) -> None:
    """Raises CatalogProblem for the first invalid change: ids > 0, no self-follow, a time in
    [0, now + 1 day] (no upper bound when `now_ms` is None, as for items)."""
    late_ms = 2**62 if now_ms is None else now_ms + MAX_FUTURE_S * 1000
    for i, change in enumerate(changes):
        where = f"changes[{i}]"
        for name in ("follower_id", "followee_id"):
            if getattr(change, name) <= 0:
                raise CatalogProblem(f"{where}.{name}", f"must be > 0, got {getattr(change, name)}")
        if change.follower_id == change.followee_id:
            raise CatalogProblem(f"{where}.followee_id", "a user cannot follow themselves")
        if not 0 <= change.timestamp_ms <= late_ms:
            raise CatalogProblem(
                f"{where}.timestamp_ms",
                f"must be >= 0 (0 = now) and at most a day ahead, got {change.timestamp_ms}",
            )


def categories_matrix(categories: Sequence[Sequence[int]]) -> np.ndarray:
    """(n, MAX_CATEGORIES) int16, 0-padded: the items table's layout."""
    out = np.zeros((len(categories), MAX_CATEGORIES), dtype=np.int16)
    for row, values in enumerate(categories):
        out[row, : len(values)] = list(values)[:MAX_CATEGORIES]
    return out


class LiveCatalog:
    """What arrived online: the added items (append-only arrays, replaced whole so readers never
    lock) and each user's follow changes (followee -> following?, the latest change wins)."""

    def __init__(self, account_of_creator: np.ndarray):
        self.account_of_creator = np.asarray(account_of_creator, dtype=np.int64)
        self.items = _empty_items()
        self._follows: dict[int, dict[int, bool]] = {}
        self._lock = threading.Lock()

    def add(self, item_ids, creator_ids, categories, upload_ts) -> None:
        """Appends items (the caller has dropped ids it already holds)."""
        new = {
            "item_id": np.asarray(item_ids, np.int64),
            "creator_id": np.asarray(creator_ids, np.int64),
            "categories": np.asarray(categories, np.int16).reshape(-1, MAX_CATEGORIES),
            "upload_ts": np.asarray(upload_ts, np.int64),
        }
        with self._lock:
            self.items = {k: np.concatenate([v, new[k]]) for k, v in self.items.items()}

    def accounts(self, creator_ids: np.ndarray) -> np.ndarray:
        """The user account of each creator (0 when the creator has none we know)."""
        ids = np.asarray(creator_ids, np.int64)
        inside = (ids > 0) & (ids < len(self.account_of_creator))
        return np.where(inside, self.account_of_creator[np.where(inside, ids, 0)], 0)

    def change_follows(self, followers, followees, unfollow) -> None:
        with self._lock:
            for follower, followee, stop in zip(
                np.asarray(followers).tolist(),
                np.asarray(followees).tolist(),
                np.asarray(unfollow, bool).tolist(),
                strict=True,
            ):
                self._follows.setdefault(follower, {})[followee] = not stop

    def follow_changes(self, user_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(accounts followed online, accounts unfollowed online) of one user, sorted."""
        with self._lock:
            changes = dict(self._follows.get(int(user_id), {}))
        followed = sorted(a for a, on in changes.items() if on)
        dropped = sorted(a for a, on in changes.items() if not on)
        return np.array(followed, np.int64), np.array(dropped, np.int64)


def _empty_items() -> dict[str, np.ndarray]:
    return {
        "item_id": np.empty(0, np.int64),
        "creator_id": np.empty(0, np.int64),
        "categories": np.empty((0, MAX_CATEGORIES), np.int16),
        "upload_ts": np.empty(0, np.int64),
    }


# -- a stage's side ------------------------------------------------------------------------------
class CatalogUpdatesService(catalog_pb2_grpc.CatalogUpdatesServicer):
    """Applies forwarded uploads and follow changes to the store a stage serves (`store()` is
    read per call, so a hot reload's new store gets what follows; the service keeps what it
    applied and hands it to a new store with `reapply`). What it keeps stays bounded: uploads
    a new bundle already holds (the daily retrain folds them in) are forgotten at its reload,
    and only each (follower, followee) pair's latest change is kept."""

    def __init__(self, store: Callable[[], FeatureStore], max_batch: int = 1000):
        self.store = store
        self.max_batch = max_batch
        self._items: list[catalog_pb2.NewItem] = []
        self._changes: dict[tuple[int, int], catalog_pb2.FollowChange] = {}
        self._lock = threading.Lock()

    def AddItems(self, request: catalog_pb2.AddItemsRequest, context: grpc.ServicerContext):
        store = self.store()
        try:
            self._check_size(len(request.items), "items")
            highest = store.n_items + MAX_NEW_ITEMS
            check_new_items(
                request.items, store.n_categories, None, False, highest, content_width(store.spec)
            )
        except CatalogProblem as problem:
            invalid_argument(context, problem.field, str(problem))
        added = apply_items(store, request.items)
        with self._lock:
            self._items.extend(request.items)
        return catalog_pb2.AddItemsResponse(
            item_ids=[i.item_id for i in request.items], added=added
        )

    def ChangeFollows(
        self, request: catalog_pb2.ChangeFollowsRequest, context: grpc.ServicerContext
    ):
        try:
            self._check_size(len(request.changes), "changes")
            check_follow_changes(request.changes, None)
        except CatalogProblem as problem:
            invalid_argument(context, problem.field, str(problem))
        apply_follows(self.store(), request.changes)
        with self._lock:
            for change in request.changes:  # in order: the latest change of a pair wins
                self._changes[(change.follower_id, change.followee_id)] = change
        return catalog_pb2.ChangeFollowsResponse(applied=len(request.changes))

    def reapply(self, store) -> None:
        """Gives a newly loaded store (hot reload) what this stage was told since start."""
        with self._lock:
            items, changes = list(self._items), list(self._changes.values())
        ids = np.array([i.item_id for i in items], np.int64)
        bundled = set(ids[store.known_items(ids)].tolist()) if len(ids) else set()
        apply_items(store, items)
        apply_follows(store, changes)
        with self._lock:  # what arrived meanwhile is kept: only the bundle's own items go
            self._items = [i for i in self._items if i.item_id not in bundled]

    def held(self) -> tuple[int, int]:
        """(uploads, follow changes) kept for the next reload."""
        with self._lock:
            return len(self._items), len(self._changes)

    def _check_size(self, n: int, field: str) -> None:
        if n > self.max_batch:
            raise CatalogProblem(field, f"{n} in one call; at most {self.max_batch}")


def content_matrix(contents: Sequence[Sequence[float]], width: int) -> np.ndarray:
    """(n, width) float32; an item sent without content (or of another width) is zeros, the
    unknown content vector."""
    out = np.zeros((len(contents), width), dtype=np.float32)
    for row, values in enumerate(contents):
        if width and len(values) == width:
            out[row] = values
    return out


def apply_items(store, items: Sequence[catalog_pb2.NewItem]) -> int:
    """Adds the items (dense ids set) to a feature store; returns how many were new to it."""
    if not items:
        return 0
    now_s = _now_ms() // 1000
    return store.add_items(
        np.array([i.item_id for i in items], np.int64),
        np.array([i.creator_id for i in items], np.int64),
        categories_matrix([i.categories for i in items]),
        np.array([i.upload_time_ms // 1000 if i.upload_time_ms else now_s for i in items]),
        content_matrix([i.content for i in items], content_width(store.spec)),
    )


def apply_follows(store, changes: Sequence[catalog_pb2.FollowChange]) -> None:
    if changes:
        store.change_follows(
            np.array([c.follower_id for c in changes], np.int64),
            np.array([c.followee_id for c in changes], np.int64),
            np.array([c.unfollow for c in changes], bool),
        )


def uploads_to_items(table: pa.Table) -> list[catalog_pb2.NewItem]:
    """Logged uploads (UPLOADS rows) as forwarded items."""
    contents = (
        table["content"].to_pylist()
        if "content" in table.column_names
        else [None] * table.num_rows  # a log written before uploads carried content
    )
    return [
        catalog_pb2.NewItem(
            item_key=key,
            item_id=item,
            creator_id=creator,
            categories=cats,
            upload_time_ms=ms,
            content=content or [],
        )
        for item, key, creator, cats, ms, content in zip(
            table["item_id"].to_pylist(),
            table["item_key"].to_pylist(),
            table["creator_id"].to_pylist(),
            table["categories"].to_pylist(),
            table["upload_ms"].to_pylist(),
            contents,
            strict=True,
        )
    ]


def follows_to_changes(table: pa.Table) -> list[catalog_pb2.FollowChange]:
    return [
        catalog_pb2.FollowChange(follower_id=a, followee_id=b, unfollow=u, timestamp_ms=t)
        for a, b, u, t in zip(
            table["follower_id"].to_pylist(),
            table["followee_id"].to_pylist(),
            table["unfollow"].to_pylist(),
            table["timestamp_ms"].to_pylist(),
            strict=True,
        )
    ]


def replay_catalog(store, log) -> tuple[int, int]:
    """Applies every logged upload and follow change (an open EventLog) to a store at start."""
    items = uploads_to_items(log.read_records("uploads"))
    changes = follows_to_changes(log.read_records("follows"))
    apply_items(store, items)
    apply_follows(store, changes)
    return len(items), len(changes)


def _now_ms() -> int:
    return int(time.time() * 1000)
