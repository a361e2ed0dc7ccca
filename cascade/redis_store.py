"""The shared online store on Redis: every replica of every stage reads the same online state.

Keys (under `cascade:<dataset>:`), hash-tagged so that each script touches one slot of a Redis
Cluster (cascade/redis_client.py): per user `u:{<id>}:plays` (sorted set scored by event time,
capped: a late event never becomes the newest), `u:{<id>}:consumed` (sorted set item -> time,
capped), `u:{<id>}:shown` (sorted set item -> expiry in ms: the TTL of the already-shown filter);
`counters:{c<shard>}:<event>` (hash item -> count of what arrived online, items spread over
COUNTER_SHARDS shards; the training period's counts stay in memory). User keys expire
`user_ttl_s` after the user's last event.

Writes are idempotent: a Lua script applies a Feedback batch, one call per slot the batch touches
(one call, atomic, on a single server), and skips each user or counter update it has already
applied (same user, item, event, time) within `dedupe_ttl_s`: a batch that failed part-way is
completed by its retry without counting anything twice, and reported as failed until then.
Reads cost one pipelined round trip (history of many users at once, consumed, shown); the item
counters the fresh-content channel scores thousands of candidates with come from a local
snapshot refreshed every `refresh_s` in the background, not from per-request HMGETs. A read
that fails (Redis down or late) degrades to the training period's state and is counted; a write
that fails raises, so Feedback never reports an event as stored when it was not.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import numpy as np
import redis

from cascade.data.schema import Dataset, Table
from cascade.feature_store import EVENTS, DatasetFeatures, check_event_names, now_ms, replay
from cascade.features import FeatureSpec
from cascade.online_state import StoreLimits
from cascade.redis_client import connect, slot_groups

log = logging.getLogger(__name__)

# One part of a Feedback batch, all in one slot (on a single server: the whole batch). KEYS[1]
# only routes the script to its slot. Entries of 6 ARGVs: kind, tag, user, item, event, ts.
# Kind 'u' applies a consumption or play to the user's keys (tag = user); kind 'c' counts the
# event in its item's counter shard (tag = shard). Each entry first sets its own marker (SET NX
# with the dedupe TTL) and is skipped when the marker exists, so a part applied before a failure
# elsewhere is not applied twice by the retry. Returns the new 'c' entries: new events.
_RECORD = """
local prefix = ARGV[1]
local plays_cap, consumed_cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local user_ttl, dedupe_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local consumption = {play = true, complete = true, like = true, share = true}
local applied = 0
for i = 6, #ARGV, 6 do
  local kind, tag, user, item = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local event, ts = ARGV[i + 4], ARGV[i + 5]
  local once = ':applied:' .. user .. ':' .. item .. ':' .. event .. ':' .. ts
  if kind == 'c' then
    local shard = prefix .. 'counters:{c' .. tag .. '}'
    if redis.call('SET', shard .. once, '1', 'NX', 'EX', dedupe_ttl) then
      applied = applied + 1
      redis.call('HINCRBY', shard .. ':' .. event, item, 1)
    end
  else
    local base = prefix .. 'u:{' .. user .. '}:'
    if redis.call('SET', base .. once, '1', 'NX', 'EX', dedupe_ttl) then
      if consumption[event] then
        local key = base .. 'consumed'
        redis.call('ZADD', key, 'GT', ts, item)
        redis.call('ZREMRANGEBYRANK', key, 0, -consumed_cap - 1)
        redis.call('EXPIRE', key, user_ttl)
      end
      if event == 'play' then
        local key = base .. 'plays'
        local seq = redis.call('INCR', base .. 'play_seq')
        redis.call('EXPIRE', base .. 'play_seq', user_ttl)
        redis.call('ZADD', key, ts, string.format('%016d:%s', seq, item))
        redis.call('ZREMRANGEBYRANK', key, 0, -plays_cap - 1)
        redis.call('EXPIRE', key, user_ttl)
      end
    end
  end
end
return applied
"""
# Item counters live in this many hashes per event, tagged {c0}..: spread over a cluster's
# masters, each updated by the script of its own slot.
COUNTER_SHARDS = 16
_CONSUMPTION = frozenset(("play", "complete", "like", "share"))


class RedisState:
    """The online half on Redis, without the dataset's tables: what the gateway writes (events,
    shown pages) and reads (a user's recent consumption for its local fallbacks). Thread-safe."""

    def __init__(
        self,
        url: str,
        namespace: str,
        n_items: int,
        limits: StoreLimits,
        read_timeout_s: float = 0.1,
        write_timeout_s: float = 2.0,
    ):
        self.limits = limits
        self.prefix = f"cascade:{namespace}:"
        self._read = connect(url, read_timeout_s)  # the request path: short timeouts
        self._write = connect(url, write_timeout_s)
        self._record = self._write.register_script(_RECORD)
        self.read_failures = 0
        self.n_items = n_items  # grows with uploads (grow): the snapshot's rows
        self.snapshot = np.zeros((n_items, len(EVENTS)), dtype=np.int64)
        self.snapshot_ms = 0
        try:
            self._write.ping()
            self.refresh()
        except redis.RedisError as error:
            raise ConnectionError(
                f"the Redis online store at {url} does not answer: {error}"
            ) from None
        self._stop = threading.Event()
        # The thread holds the state weakly: a store dropped by a hot reload stops refreshing.
        threading.Thread(
            target=_refresh_loop, args=(weakref.ref(self), self._stop), daemon=True
        ).start()

    def close(self) -> None:
        self._stop.set()
        self._read.close()
        self._write.close()

    # -- reads (degrade to nothing online on failure) -----------------------------------------
    def recent_plays(self, user_ids: list[int], n: int) -> list[list[int]]:
        pipe = self._read.pipeline(transaction=False)
        for user in user_ids:
            pipe.zrevrange(self._user_key(user, "plays"), 0, n - 1)
        replies = self._run(pipe, [[] for _ in user_ids])
        return [[int(m.rsplit(b":", 1)[1]) for m in reply] for reply in replies]

    def consumed(self, user_id: int, n: int = -1) -> list[int]:
        """The user's consumed items, newest first (the newest `n`; -1: all)."""
        pipe = self._read.pipeline(transaction=False)
        pipe.zrevrange(self._user_key(user_id, "consumed"), 0, n - 1 if n > 0 else -1)
        (items,) = self._run(pipe, [[]])
        return [int(i) for i in items]

    def shown(self, user_id: int, at_ms: int | None = None) -> list[int]:
        at_ms = now_ms() if at_ms is None else int(at_ms)
        pipe = self._read.pipeline(transaction=False)
        pipe.zrangebyscore(self._user_key(user_id, "shown"), f"({at_ms}", "+inf")
        (items,) = self._run(pipe, [[]])
        return [int(i) for i in items]

    # -- writes (raise redis.RedisError when not stored) -------------------------------------
    def record(
        self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, events: list[str]
    ) -> int:
        """Applies a batch (one round trip per slot it touches: one on a single server, where it
        is atomic); returns how many events were new (a repeat within dedupe_ttl_s is skipped).
        Raises when a part failed; the parts applied are skipped by the retry, which completes
        the batch without counting anything twice."""
        check_event_names(events)
        limits = self.limits
        head: list[str | int] = [self.prefix, limits.recent_plays, limits.consumed]
        head += [limits.user_ttl_s, limits.dedupe_ttl_s]
        users = np.asarray(user_ids, dtype=np.int64).tolist()
        items = np.asarray(item_ids, dtype=np.int64).tolist()
        stamps = np.asarray(ts, dtype=np.int64).tolist()
        parts: list[tuple[str, tuple[str | int, ...]]] = []
        for user, item, event, stamp in zip(users, items, events, stamps, strict=True):
            shard = item % COUNTER_SHARDS
            parts.append((self._counter_key(shard, event), ("c", shard, user, item, event, stamp)))
            if event in _CONSUMPTION:
                parts.append((self._user_key(user, "plays"), ("u", user, user, item, event, stamp)))
        applied = 0
        for key, entries in slot_groups(self._write, parts).values():
            args = head + [value for entry in entries for value in entry]
            applied += int(self._record(keys=[key], args=args))
        return applied

    def record_shown(self, user_id: int, item_ids: np.ndarray, time_ms: int) -> None:
        """Remembers the page until time_ms + shown_ttl_s (one round trip; idempotent)."""
        items = np.asarray(item_ids, dtype=np.int64).tolist()
        if not items:
            return
        ttl_ms = int(self.limits.shown_ttl_s * 1000)
        key = self._user_key(user_id, "shown")
        pipe = self._write.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", time_ms)
        pipe.zadd(key, dict.fromkeys(items, time_ms + ttl_ms), gt=True)
        pipe.zremrangebyrank(key, 0, -self.limits.shown - 1)
        pipe.pexpire(key, ttl_ms)
        pipe.execute()

    # -- counters snapshot ---------------------------------------------------------------------
    def refresh(self) -> None:
        """Reloads the online item counters (one pipelined round trip)."""
        pipe = self._write.pipeline(transaction=False)
        for event in EVENTS:
            for shard in range(COUNTER_SHARDS):
                pipe.hgetall(self._counter_key(shard, event))
        snapshot = np.zeros((self.n_items, len(EVENTS)), dtype=np.int64)
        replies = pipe.execute()
        for index, fields in enumerate(replies):
            column = index // COUNTER_SHARDS
            if not fields:
                continue
            items = np.fromiter((int(k) for k in fields), dtype=np.int64, count=len(fields))
            counts = np.fromiter((int(v) for v in fields.values()), np.int64, count=len(fields))
            inside = (items > 0) & (items < len(snapshot))  # an id beyond: this replica lacks
            snapshot[items[inside], column] = counts[inside]  # the upload yet (next refresh)
        self.snapshot = snapshot  # one reference swap: readers see the old or the new one
        self.snapshot_ms = now_ms()

    def grow(self, n_items: int) -> None:
        """Room for items uploaded online (AddItems): the snapshot was sized by the dataset, and
        an id beyond it was dropped at every refresh, so an upload's online counters (what the
        fresh channel's bandit and the ranker's counters read) stayed zero with Redis."""
        if n_items <= self.n_items:
            return
        self.n_items = n_items  # a refresh under way may swap in the old size: the next fixes it
        snapshot = self.snapshot
        if n_items > len(snapshot):
            grown = np.zeros((n_items, snapshot.shape[1]), dtype=snapshot.dtype)
            grown[: len(snapshot)] = snapshot
            self.snapshot = grown  # one reference swap, as refresh's

    def _user_key(self, user_id: int, kind: str) -> str:
        return f"{self.prefix}u:{{{int(user_id)}}}:{kind}"  # tagged: one slot per user

    def _counter_key(self, shard: int, event: str) -> str:
        return f"{self.prefix}counters:{{c{shard}}}:{event}"

    def _run(self, pipe, fallback: list) -> list:
        """A read pipeline's replies, or `fallback` (nothing online) on failure."""
        try:
            return pipe.execute()
        except redis.RedisError as error:
            self.read_failures += 1
            if self.read_failures % 100 == 1:
                log.warning("online store: read failed (%s); serving training-period state", error)
            return fallback


class RedisFeatureStore(DatasetFeatures):
    """FeatureStore on a Redis server (`url` = redis://host:port/db): the dataset's tables in
    memory, the online state in Redis (RedisState). Thread-safe."""

    def __init__(
        self,
        dataset: Dataset,
        spec: FeatureSpec,
        interactions: Table,
        impressions: Table | None = None,
        url: str = "redis://127.0.0.1:6379/0",
        limits: StoreLimits | None = None,
    ):
        super().__init__(dataset, spec, interactions, impressions)
        self.limits = limits or StoreLimits(recent_plays=max(50, spec.history_length))
        self.state = RedisState(url, self.dataset_name, len(self._counters), self.limits)

    @classmethod
    def from_split(
        cls, dataset: Dataset, spec: FeatureSpec, split, url: str, limits: StoreLimits | None = None
    ) -> RedisFeatureStore:
        return cls(dataset, spec, split.train_interactions, split.train_impressions, url, limits)

    @property
    def read_failures(self) -> int:
        return self.state.read_failures

    def close(self) -> None:
        self.state.close()

    def history(self, user_ids: np.ndarray) -> np.ndarray:
        """(n, history_length) online plays (newest first) before the training period's."""
        ids = np.asarray(user_ids, dtype=np.int64)
        return self._history_with(
            ids, self.state.recent_plays(ids.tolist(), self.spec.history_length)
        )

    def consumed(self, user_id: int) -> np.ndarray:
        """Sorted unique items the user played, completed, liked or shared."""
        online = np.array(self.state.consumed(user_id), dtype=np.int64)
        return np.union1d(self._trained_consumed(int(user_id)), online)

    def recent_consumed(self, user_id: int, n: int) -> np.ndarray:
        """The user's newest `n` items consumed online, newest first."""
        return np.array(self.state.consumed(user_id, n), dtype=np.int64)

    def shown(self, user_id: int, at_ms: int | None = None) -> np.ndarray:
        """Items shown to the user within shown_ttl_s before `at_ms` (the request's time; None =
        now), sorted."""
        return np.unique(np.array(self.state.shown(user_id, at_ms), dtype=np.int64))

    def item_counters(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Training-period counts plus the online snapshot (at most about refresh_s old)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        rows, inside = self._trained_counters(ids)
        snapshot = self.state.snapshot  # grown with the uploads (_grow_counters)
        inside &= ids < len(snapshot)
        rows = rows + snapshot[np.where(inside, ids, 0)] * inside[:, None]
        return {event: rows[:, i] for i, event in enumerate(EVENTS)}

    def counter_totals(self) -> dict[str, int]:
        """Per event, the sum over all items of what item_counters answers (replica agreement)."""
        totals = self._counters.sum(axis=0) + self.state.snapshot.sum(axis=0)
        return {event: int(totals[i]) for i, event in enumerate(EVENTS)}

    def record(
        self, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, events: list[str]
    ) -> int:
        """See RedisState.record; raises redis.RedisError when the batch was not stored."""
        return self.state.record(user_ids, item_ids, ts, events)

    def record_shown(self, user_id: int, item_ids: np.ndarray, time_ms: int) -> None:
        self.state.record_shown(user_id, item_ids, time_ms)

    def refresh(self) -> None:
        self.state.refresh()

    def _grow_counters(self, n: int) -> None:
        # The snapshot first: a reader sizes its ids by the trained counters, so the snapshot is
        # never the shorter of the two once both have grown.
        self.state.grow(n)
        super()._grow_counters(n)

    def rebuild(self, events) -> int:
        """Replays an event-log table (events already applied are skipped); returns its rows."""
        applied = replay(self, events)
        self.refresh()
        return applied


def _refresh_loop(state_ref: weakref.ref, stop: threading.Event) -> None:
    state = state_ref()
    period = state.limits.refresh_s if state else 1.0
    del state
    while not stop.wait(period):
        state = state_ref()
        if state is None:
            return
        try:
            state.refresh()
        except redis.RedisError as error:  # keep serving the last snapshot
            state.read_failures += 1
            log.warning("online store: counters refresh failed: %s", error)
        del state


def wait_for(condition, timeout_s: float = 5.0, step_s: float = 0.02) -> bool:
    """Polls `condition` until true (tests and benches waiting on the counters snapshot)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)
    return True
