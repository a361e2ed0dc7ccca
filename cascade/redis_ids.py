"""The id map on Redis: every gateway replica maps a new external id to the same dense id.

Same methods and rules as cascade.ids.IdMap (lookup / assign / external / len, `identity` ids
that cost nothing, a capacity bound, IdSpaceFull). Keys `cascade:{<namespace>:ids}:by_key`
(hash external key -> dense id) and `...:by_id` (hash dense id -> external key), one hash tag
so that both sit in one slot of a Redis Cluster. `assign`
runs one Lua script: it finds the new keys of the batch, refuses all of them when they would
overflow the capacity, else gives each the next dense id; Redis runs scripts one at a time, so two
gateways assigning the same new id at once get the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import redis

from cascade.ids import ExternalId, IdSpaceFull, external_key
from cascade.redis_client import Client, connect

_ASSIGN = """
local by_key, by_id = KEYS[1], KEYS[2]
local capacity, identity = tonumber(ARGV[1]), tonumber(ARGV[2])
local size = identity + redis.call('HLEN', by_key)
local new, fresh = {}, {}
for i = 3, #ARGV do
  local key = ARGV[i]
  if not fresh[key] and redis.call('HEXISTS', by_key, key) == 0 then
    fresh[key] = true
    new[#new + 1] = key
  end
end
if size + #new > capacity then
  return redis.error_reply('IDSPACEFULL ' .. #new .. ' new ids do not fit: ' .. size ..
    ' of ' .. capacity .. ' are taken')
end
for _, key in ipairs(new) do
  size = size + 1
  redis.call('HSET', by_key, key, size)
  redis.call('HSET', by_id, size, key)
end
local out = {}
for i = 3, #ARGV do
  out[#out + 1] = tonumber(redis.call('HGET', by_key, ARGV[i]))
end
return out
"""


class RedisIdMap:
    """External ids <-> dense ids 1..len(self), shared through a Redis server."""

    def __init__(
        self,
        client: Client,
        namespace: str,
        capacity: int,
        identity: int = 0,
        known: Sequence[str] = (),
    ):
        if identity < 0 or capacity < identity + len(known):
            raise ValueError(
                f"capacity {capacity} is below the {identity + len(known)} ids already known"
            )
        self.capacity = capacity
        self._identity = identity
        self._client = client
        tag = f"{{{namespace}:ids}}"  # one slot for both hashes: the script touches both
        self._keys = (f"cascade:{tag}:by_key", f"cascade:{tag}:by_id")
        self._assign = client.register_script(_ASSIGN)
        if known:  # an imported dataset's ids take dense ids identity+1.. in their order
            got = self.assign(known)
            if got.tolist() != list(range(identity + 1, identity + len(known) + 1)):
                raise ValueError(
                    f"the Redis id map {self._keys[0]} disagrees with the dataset's saved ids"
                )

    @classmethod
    def from_url(cls, url: str, namespace: str, capacity: int, identity: int = 0) -> RedisIdMap:
        return cls(connect(url, 2.0), namespace, capacity, identity)

    def __len__(self) -> int:
        return self._identity + int(self._client.hlen(self._keys[0]))

    def lookup(self, externals: Iterable[ExternalId]) -> np.ndarray:
        """Dense ids, 0 where the external id was never seen (nothing is added)."""
        keys = [external_key(e) for e in externals]
        ids = [self._identity_id(k) for k in keys]
        asked = [k for k, i in zip(keys, ids, strict=True) if not i]
        found = iter(self._client.hmget(self._keys[0], asked) if asked else [])
        return np.array([i or int(next(found) or 0) for i in ids], dtype=np.int64)

    def assign(self, externals: Iterable[ExternalId]) -> np.ndarray:
        """Dense ids, adding unseen ones in order; all or nothing when the map would overflow."""
        keys = [external_key(e) for e in externals]
        ids = [self._identity_id(k) for k in keys]
        asked = [k for k, i in zip(keys, ids, strict=True) if not i]
        if asked:
            try:
                got = iter(
                    self._assign(keys=self._keys, args=[self.capacity, self._identity, *asked])
                )
            except redis.ResponseError as error:
                if "IDSPACEFULL" in str(error):
                    raise IdSpaceFull(str(error).split("IDSPACEFULL ", 1)[1]) from None
                raise
            ids = [i or int(next(got)) for i in ids]
        return np.array(ids, dtype=np.int64)

    def external(self, dense_ids: Iterable[int]) -> list[str]:
        """The external key of each dense id (ValueError for 0 or an id the map never gave)."""
        dense = [int(d) for d in dense_ids]
        stored = [d for d in dense if d > self._identity]
        found = dict(
            zip(stored, self._client.hmget(self._keys[1], stored) if stored else [], strict=True)
        )
        out = []
        for d in dense:
            if 1 <= d <= self._identity:
                out.append(str(d))
            elif (key := found.get(d)) is not None:
                out.append(key.decode() if isinstance(key, bytes) else str(key))
            else:
                raise ValueError(f"dense id {d} is not in the map (1..{len(self)})")
        return out

    def _identity_id(self, key: str) -> int:
        if self._identity and key.isdigit() and key[0] != "0" and int(key) <= self._identity:
            return int(key)
        return 0
