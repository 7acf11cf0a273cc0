"""RedisRegistry: what the brokers sharing a :class:`~zerotask.store.redis.RedisStore` agree on beside the
tasks, each in one atomic script under the store's hash tag:

- ``slots``: the latest slot of each periodic task that a broker took (:meth:`~zerotask.store.Store.claim_slot`);
- ``locks``: which task holds each ``@task(unique_for=...)`` lock, until when
  (:meth:`~zerotask.store.Store.lock_unique`);
- ``tokens``: the rate limits' token buckets (:meth:`~zerotask.store.Store.take_tokens`).

Each is a hash with a sorted set beside it that says what to drop first, so that each stays bounded:
the names claimed longest ago, the locks soonest to expire (the expired ones a few at a time), the
buckets that are full again (an absent bucket reads as full).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zerotask.store.base import MAX_REMEMBERED_METHODS, MAX_UNIQUE_LOCKS

# The keys these scripts get after the store's KEY_NAMES: suffixes after "<prefix>:{<queue>}:".
REGISTRY_KEY_NAMES = (
    "slots",  # hash: periodic task name -> the latest slot taken
    "slots:claimed",  # sorted set: name -> the number of the claim (the lowest is forgotten first)
    "slots:next",  # the last number given to a claim
    "locks",  # hash: unique key -> until|task id
    "locks:until",  # sorted set: unique key -> until
    "tokens",  # hash: bucket name -> tokens|when they were counted
    "tokens:full",  # sorted set: bucket name -> when it is full again
)

_KEYS = f"""
local SLOTS, SLOTS_CLAIMED, SLOTS_NEXT, LOCKS, LOCKS_UNTIL, TOKENS, TOKENS_FULL =
  unpack(KEYS, #KEYS - {len(REGISTRY_KEY_NAMES) - 1})
"""

# ARGV[4] name, ARGV[5] slot, ARGV[6] how many names to keep. Answers 1 if the slot is taken now, else 0.
CLAIM_SLOT = (
    _KEYS
    + r"""
local taken = redis.call('HGET', SLOTS, ARGV[4])
if taken and tonumber(taken) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', SLOTS, ARGV[4], ARGV[5])
redis.call('ZADD', SLOTS_CLAIMED, redis.call('INCR', SLOTS_NEXT), ARGV[4])
local excess = redis.call('ZCARD', SLOTS_CLAIMED) - tonumber(ARGV[6])
if excess > 0 then
  local gone = redis.call('ZPOPMIN', SLOTS_CLAIMED, excess)
  for i = 1, #gone, 2 do redis.call('HDEL', SLOTS, gone[i]) end
end
return 1
"""
)

# ARGV[4] key, ARGV[5] task id, ARGV[6] until, ARGV[7] how many locks to keep. Answers the id of the task that
# holds the lock (until later than now, and without an outcome), or false when the lock is given to this one.
LOCK_UNIQUE = (
    _KEYS
    + r"""
local key, id = ARGV[4], ARGV[5]
local held = redis.call('HGET', LOCKS, key)
if held then
  -- until|taken|id: a holder not stored yet holds the lock for a while (another broker flushes its add
  -- within a round of its loop), so two brokers cannot both take it in that window.
  local cut = string.find(held, '|', 1, true)
  local cut2 = string.find(held, '|', cut + 1, true)
  local holder = string.sub(held, cut2 + 1)
  if holder ~= id and tonumber(string.sub(held, 1, cut - 1)) > tonumber(NOW) then
    local t = load(holder)
    if t and not FINAL[t.state] then return holder end
    if not t and tonumber(string.sub(held, cut + 1, cut2 - 1)) > tonumber(NOW) - 10 then return holder end
  end
end
redis.call('HSET', LOCKS, key, ARGV[6] .. '|' .. NOW .. '|' .. id)
redis.call('ZADD', LOCKS_UNTIL, ARGV[6], key)
for _, old in ipairs(redis.call('ZRANGEBYSCORE', LOCKS_UNTIL, '-inf', NOW, 'LIMIT', 0, 8)) do
  if old ~= key then redis.call('ZREM', LOCKS_UNTIL, old); redis.call('HDEL', LOCKS, old) end
end
local excess = redis.call('ZCARD', LOCKS_UNTIL) - tonumber(ARGV[7])
if excess > 0 then
  local gone = redis.call('ZPOPMIN', LOCKS_UNTIL, excess)
  for i = 1, #gone, 2 do redis.call('HDEL', LOCKS, gone[i]) end
end
return false
"""
)

# ARGV[4] name, ARGV[5] tokens a second, ARGV[6] burst, ARGV[7] count (negative: give back). Answers how many
# were taken; the arithmetic is zerotask.store.base.TokenBuckets', in the same doubles.
TAKE_TOKENS = (
    _KEYS
    + r"""
local name, per_s, burst, count, now = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(NOW)
local tokens, at = burst, now
local kept = redis.call('HGET', TOKENS, name)
if kept then
  local cut = string.find(kept, '|', 1, true)
  tokens, at = tonumber(string.sub(kept, 1, cut - 1)), tonumber(string.sub(kept, cut + 1))
end
tokens = math.min(burst, tokens + math.max(0, now - at) * per_s)
local taken = math.min(count, math.floor(tokens))
tokens = math.min(burst, tokens - taken)
redis.call('HSET', TOKENS, name, string.format('%.17g', tokens) .. '|' .. NOW)
local full = per_s > 0 and string.format('%.17g', now + (burst - tokens) / per_s) or '+inf'
redis.call('ZADD', TOKENS_FULL, full, name)
for _, old in ipairs(redis.call('ZRANGEBYSCORE', TOKENS_FULL, '-inf', NOW, 'LIMIT', 0, 8)) do
  if old ~= name then redis.call('ZREM', TOKENS_FULL, old); redis.call('HDEL', TOKENS, old) end
end
return taken
"""
)

REGISTRY_SCRIPTS = {"claim_slot": CLAIM_SLOT, "lock_unique": LOCK_UNIQUE, "take_tokens": TAKE_TOKENS}


class RedisRegistry:
    """``base``: the store's key prefix, hash tag included. ``read(name, *args, keys=...)`` runs the store's
    script ``name`` in one round trip (after the store's buffered writes) and returns its answer."""

    def __init__(self, base: str, read: Callable[..., Any]) -> None:
        self._keys = [base + name for name in REGISTRY_KEY_NAMES]
        self._read = read

    def claim_slot(self, name: str, slot: float) -> bool:
        return bool(self._read("claim_slot", name, repr(float(slot)), MAX_REMEMBERED_METHODS, keys=self._keys))

    def lock_unique(self, key: str, task_id: str, until: float) -> str | None:
        holder = self._read("lock_unique", key, task_id, repr(float(until)), MAX_UNIQUE_LOCKS, keys=self._keys)
        return None if holder is None else str(holder.decode())

    def take_tokens(self, name: str, per_s: float, burst: float, count: int) -> int:
        if count == 0:
            return 0
        return int(self._read("take_tokens", name, repr(float(per_s)), repr(float(burst)), count, keys=self._keys))
