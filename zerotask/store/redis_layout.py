"""How the tasks of :class:`~zerotask.store.redis.RedisStore` lie in Redis: the keys every script gets,
the Lua helpers every script (:mod:`zerotask.store.redis_scripts`) starts with, and how a script's row
becomes a :class:`~zerotask.store.base.TaskRecord`.

Every script gets the same KEYS (:data:`KEY_NAMES`, in that order, then any per-call keys), all under
one hash tag, so that a script touches one slot (Redis Cluster). The tasks live in a few hashes keyed
by task id rather than in a key per task, so that no script touches a key it was not given.

A task's row (its field in ``task``) is ``state|lease|finished_at|~payload|seq|attempts|created_at|priority|due_at|names``:
what a task's way through the queue changes comes first, so that the scripts of add, take and finish
(:mod:`zerotask.store.redis_flow`) rewrite a row by cutting and joining strings, without parsing it. The
payload is the params (JSON ``[args, kwargs, options]``, "" once FINISHED) and the outcome (JSON
``{"result": ...}`` or ``{"error": ...}``, "" until final), each after a byte 0x1F and the outcome followed
by one: JSON holds no control character, so the payload needs no lengths, and each step of a task (add,
take, finish) is one write of one hash field. (A row of a store written by a version before this one has
no payload: its params and outcome are in ``params`` and ``outcome``, where every script reads and
writes them as that version did; the take and finish scripts look there only when ``params`` exists,
and a row keeps its form for its life.)
``seq`` is 12 hex digits; ``names`` is the named queue's length in bytes (8 hex digits), the queue and
the method (last: queue and method may hold any character; a broker id holds no "|"; lease, finished_at
and due_at are "" for none, and lease and finished_at are "" while the task is QUEUED or SCHEDULED). Times
stay strings end to end, as Python wrote them, so they come back exact. The queue is one sorted set
ordered by member (all scores 0): a member is the method's length (8 hex digits) and the method, the
named queue's length and the queue, 9 minus the priority (one digit), the sequence and the task id. So
one method's tasks in one named queue are a range in the order to take them: the highest priority first,
then the earliest submitted. ``scheduled`` holds the SCHEDULED tasks by ``due_at``, each as its sequence
and id, so that ties go in the order submitted. The ASSIGNED and RETRY tasks leased to a broker are in
its set ``held:<broker id>``, for :meth:`reclaim` (an add to and a remove from a set cost a task a third
of what they cost in a sorted set; every script gets this broker's set as the key after
:data:`KEY_NAMES`). A script may move a task another broker holds (a claim, a revoke): it cannot name
that broker's set, so the id stays there, and the scripts that read a set skip an id whose task is not
leased to its broker (the broker's reclaim drops them from its own set a few at a time). A store written
by a version before this one has its held tasks in the sorted set ``held``, as ``lease|id``: reclaim
and listings read it too, and every script removes a task from it while it exists.

``live`` holds the SCHEDULED tasks by created_at, for listings (the QUEUED and held ones are listed from
where they wait). A store written by a version before this one holds there every task that was unfinished
then: listings skip those that are not SCHEDULED, and expire drains them as it forgets their tasks.

Mutating scripts return ``{answer, queued counts as HGETALL}``: the store keeps the counts without
asking again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import TaskRecord
from zerotask.wire import ASSIGNED, FAILED, FINISHED, QUEUED, RETRY, REVOKED, SCHEDULED

# The keys every script gets, as KEYS[1..n]: suffixes after "<prefix>:{<queue>}:".
KEY_NAMES = (
    "task",  # hash: task id -> its row (see above), with its params and outcome
    "params",  # hash: task id -> JSON [args, kwargs, options] (gone once FINISHED), of rows without a payload
    "outcome",  # hash: task id -> JSON {"result": ...} or {"error": ...}, of rows without a payload
    "owner",  # hash: task id -> the key that submitted it (only when there is one)
    "queue",  # sorted set by member: the QUEUED tasks, one range per method and named queue, in order
    "scheduled",  # sorted set: the SCHEDULED tasks' sequence and id -> due_at
    "live",  # sorted set: SCHEDULED task id -> created_at, for listings (see LIVE below)
    "ended:FINISHED",  # sorted sets: final task id -> finished_at (listings, expire)
    "ended:FAILED",
    "ended:REVOKED",
    "held",  # sorted set by member: lease|id of ASSIGNED and RETRY tasks, of a version before (see above)
    "queued",  # hash: method -> how many QUEUED
    "states",  # hash: state -> how many (QUEUED aside)
    "next",  # the last sequence number given
    "brokers",  # set: broker ids that attached
    "reply:add",  # the last add batch of this store: its token and answers (replays are answered alike)
    "reply:take",  # list: the last take_many of this store: its token, its wants' counts and the ids it took
    "reply:finish",  # the last finish_many of this store: its token and answers
)

PRELUDE = r"""
local TASK, PARAMS, OUTCOME, OWNER, QUEUE, SCHEDULE, LIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ENDED = {FINISHED = KEYS[8], FAILED = KEYS[9], REVOKED = KEYS[10]}
local HELD, QUEUED, STATES, NEXT, BROKERS = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local REPLY_ADD, REPLY_TAKE, REPLY_FINISH = KEYS[16], KEYS[17], KEYS[18]
local MINE = KEYS[@MINE@]  -- set: the ids of the tasks leased to this broker (see held_key)
local ME, NOW, CHANNEL = ARGV[1], ARGV[2], ARGV[3]
local FINAL = {FINISHED = true, FAILED = true, REVOKED = true}
local LEASED = {ASSIGNED = true, RETRY = true}
local queued_delta, states_delta, leased = {}, {}, false

-- Writes wait in `writes` (key -> member or field -> score or value, or true for a set's member, false to
-- remove) and go out in a few variadic commands at sync(): a command per task per index would cost several
-- times more. Reads of hashes see them; sync() comes before any read of a sorted set or a set.
local writes, kinds, cache = {}, {}, {}
local REMOVE, ADD = {z = 'ZREM', h = 'HDEL', s = 'SREM'}, {z = 'ZADD', h = 'HSET', s = 'SADD'}
local function put(kind, key, name, value)
  if not writes[key] then writes[key], kinds[key] = {}, kind end
  writes[key][name] = value
end

local function sync()
  for key, pending in pairs(writes) do
    local kind, set, gone = kinds[key], {}, {}
    if kind == 'h' then cache[key] = cache[key] or {} end
    for name, value in pairs(pending) do
      if kind == 'h' then cache[key][name] = value end
      if not value then gone[#gone + 1] = name
      elseif kind == 'z' then set[#set + 1] = value; set[#set + 1] = name
      elseif kind == 's' then set[#set + 1] = name
      else set[#set + 1] = name; set[#set + 1] = value end
    end
    for i = 1, #gone, 1000 do redis.call(REMOVE[kind], key, unpack(gone, i, math.min(i + 999, #gone))) end
    for i = 1, #set, 2000 do redis.call(ADD[kind], key, unpack(set, i, math.min(i + 1999, #set))) end
  end
  writes, kinds = {}, {}
end

local function hget(key, id)
  local value = writes[key] and writes[key][id]
  if value == nil then value = cache[key] and cache[key][id] end
  if value == nil then value = redis.call('HGET', key, id) end
  return value
end

-- read the fields `ids` of the hashes `keys` in one HMGET each
local function preload(ids, keys)
  if #ids == 0 then return end
  for _, key in ipairs(keys) do
    cache[key] = cache[key] or {}
    for i = 1, #ids, 1000 do
      local values = redis.call('HMGET', key, unpack(ids, i, math.min(i + 999, #ids)))
      for j = 1, #values do
        if cache[key][ids[i + j - 1]] == nil then cache[key][ids[i + j - 1]] = values[j] end
      end
    end
  end
end

-- the fields `ids` of the hash `key`, in order (false for none), in one HMGET per 1,000
local function mget(key, ids)
  if #ids <= 1000 then return #ids > 0 and redis.call('HMGET', key, unpack(ids)) or {} end
  local values = {}
  for i = 1, #ids, 1000 do
    local r = redis.call('HMGET', key, unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #r do values[i + j - 1] = r[j] end
  end
  return values
end

-- a variadic write of `values` to `key`, in commands of at most 2,000 values (unpack has a limit)
local function bulk(command, key, values)
  for i = 1, #values, 2000 do redis.call(command, key, unpack(values, i, math.min(i + 1999, #values))) end
end

local function args_from(first)
  local found = {}
  for i = first, #ARGV do found[#found + 1] = ARGV[i] end
  return found
end

local function load(id)
  local m = hget(TASK, id)
  if not m then return nil end
  local t, names, at = {id = id, row = m}, nil, nil
  t.state, t.lease, t.finished, at = string.match(m, '^([^|]*)|([^|]*)|([^|]*)|()')
  if string.byte(m, at) == 31 then  -- its params and outcome are in the row (else in PARAMS and OUTCOME)
    local p = string.find(m, '\31', at + 1, true)
    local o = string.find(m, '\31', p + 1, true)
    t.params, t.outcome = string.sub(m, at + 1, p - 1), string.sub(m, p + 1, o - 1)
    at = o + 2
  end
  t.seq, t.attempts, t.created, t.priority, t.due, names =
    string.match(m, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$', at)
  local n = tonumber(string.sub(names, 1, 8), 16)
  t.queue, t.method = string.sub(names, 9, 8 + n), string.sub(names, 9 + n)
  return t
end

-- the next sequence number, as 12 hex digits (NEXT holds the last one given, in decimal)
local function new_seq() return string.format('%012x', redis.call('INCR', NEXT)) end

-- a name with its length first: no name's prefix is a prefix of another name's (kept: a script sees few)
local prefixes = {}
local function prefix(name)
  local p = prefixes[name]
  if not p then p = string.format('%08x', #name) .. name; prefixes[name] = p end
  return p
end
-- the tasks of one method in one named queue, in QUEUE: a range, in the order to take them; a member is
-- the lane, 9 - priority (one digit), the sequence (12 hex digits) and the id
local lanes = {}
local function lane(method, queue)
  local by_queue = lanes[queue]
  if not by_queue then by_queue = {}; lanes[queue] = by_queue end
  local l = by_queue[method]
  if not l then l = prefix(method) .. prefix(queue); by_queue[method] = l end
  return l
end
local RANK = {['0'] = '9', ['1'] = '8', ['2'] = '7', ['3'] = '6', ['4'] = '5', ['5'] = '4', ['6'] = '3', ['7'] = '2',
  ['8'] = '1', ['9'] = '0'}  -- 9 - priority: the highest priority sorts first
local function member(t)
  if t.member then return t.member end  -- as read from QUEUE by the script that loaded t
  return lane(t.method, t.queue) .. RANK[t.priority] .. t.seq .. t.id
end
local function timed(t) return t.seq .. t.id end

-- whether the sorted set a version before kept the held tasks in still holds some (asked once a script)
local old_held_exists
local function old_held()
  if old_held_exists == nil then old_held_exists = redis.call('EXISTS', HELD) == 1 end
  return old_held_exists
end

local function count(state, method, n)
  if state == 'QUEUED' then queued_delta[method] = (queued_delta[method] or 0) + n
  else states_delta[state] = (states_delta[state] or 0) + n end
end

-- take a task out of its state (its index and its count)
local function leave(t)
  if t.state == 'QUEUED' then put('z', QUEUE, member(t), false)
  elseif t.state == 'SCHEDULED' then put('z', SCHEDULE, timed(t), false); put('z', LIVE, t.id, false)
  elseif LEASED[t.state] then
    if t.lease == ME then put('s', MINE, t.id, false) end  -- (another broker's set keeps it: see above)
    if old_held() then put('z', HELD, t.lease .. '|' .. t.id, false) end
  elseif FINAL[t.state] then put('z', ENDED[t.state], t.id, false) end
  count(t.state, t.method, -1)
end

-- put a task in a state and write it: a held task is leased to this broker
local function enter(t, state)
  t.state, t.lease = state, ''
  if state == 'QUEUED' then put('z', QUEUE, member(t), 0)
  elseif state == 'SCHEDULED' then put('z', SCHEDULE, timed(t), t.due); put('z', LIVE, t.id, t.created)
  elseif LEASED[state] then t.lease, leased = ME, true; put('s', MINE, t.id, true)
  else put('z', ENDED[state], t.id, t.finished) end
  count(state, t.method, 1)
  local head = t.state .. '|' .. t.lease .. '|' .. t.finished .. '|'
  if t.params then
    head = head .. '\31' .. t.params .. '\31' .. t.outcome .. '\31|'
  end
  t.row = head .. table.concat({t.seq, t.attempts, t.created, t.priority, t.due, prefix(t.queue) .. t.method}, '|')
  put('h', TASK, t.id, t.row)
end

-- a task as the store returns it (see task_from_row)
local function record(t)
  if t.params then return {t.id, t.row, false, false, hget(OWNER, t.id)} end
  return {t.id, t.row, hget(PARAMS, t.id), FINAL[t.state] and hget(OUTCOME, t.id) or false, hget(OWNER, t.id)}
end

-- a task's outcome is `outcome`, and FINISHED, it keeps no params: in its row, or (a task a version before
-- this one wrote) in OUTCOME and PARAMS
local function set_outcome(t, state, outcome)
  if t.params then
    t.outcome = outcome
    if state == 'FINISHED' then t.params = '' end
  else
    put('h', OUTCOME, t.id, outcome)
    if state == 'FINISHED' then put('h', PARAMS, t.id, false) end
  end
end

local function apply(key, delta)
  for field, n in pairs(delta) do
    if n ~= 0 and redis.call('HINCRBY', key, field, n) <= 0 then redis.call('HDEL', key, field) end
  end
end

-- the answer of a mutating script, with the queued counts after it
local function done(answer)
  sync()
  if leased and ME ~= '' then redis.call('SADD', BROKERS, ME) end  -- so that its tasks are reclaimed if it dies
  apply(QUEUED, queued_delta)
  apply(STATES, states_delta)
  return {answer, redis.call('HGETALL', QUEUED)}
end

-- tell the other brokers (each on its channel, CHANNEL .. its id): a broker alone tells no one, and is
-- not woken up by what it did itself
local function publish(kind, ids)
  local message
  for _, broker in ipairs(redis.call('SMEMBERS', BROKERS)) do
    if broker ~= ME then
      message = message or cjson.encode({kind, ME, ids})
      redis.call('PUBLISH', CHANNEL .. broker, message)
    end
  end
end
"""
PRELUDE = PRELUDE.replace("@MINE@", str(len(KEY_NAMES) + 1))


def task_from_row(row: list[Any]) -> TaskRecord:
    """A task from a script's ``record(t)``: id, row, params, outcome (for a final task), owner."""
    return task_from_parts(*row)


def task_from_parts(
    task_id: bytes, task_row: bytes, params: bytes | None, outcome: bytes | None, owner: bytes | None
) -> TaskRecord:
    """A task from the parts of a script's ``record(t)`` (``params`` and ``outcome`` are those of a row
    without a payload). (Every task a broker takes comes through here: TaskRecord is made with positional
    arguments, in the order of its fields, at a third of the cost.)"""
    state, _, finished, rest = task_row.split(b"|", 3)
    if rest[0] == 0x1F:  # the payload: params and outcome
        _, params, outcome, rest = rest.split(b"\x1f", 3)
        _, _, attempts, created, priority, due, names = rest.split(b"|", 6)
    else:
        _, attempts, created, priority, due, names = rest.split(b"|", 5)
    method_queue = _decoded.get(names)
    if method_queue is None:
        if len(_decoded) >= 4096:  # names come from clients: keep a bounded few
            _decoded.clear()
        length = int(names[:8], 16)
        method_queue = _decoded[names] = (names[8 + length :].decode(), names[8 : 8 + length].decode())
    args, kwargs, options = jsonrpc.loads(params) if params else ([], {}, {})
    result = error = None
    if outcome:
        decoded = jsonrpc.loads(outcome)
        result, error = decoded.get("result"), decoded.get("error")
    return TaskRecord(
        task_id.decode(),
        method_queue[0],
        args,
        kwargs,
        _STATES.get(state) or state.decode(),
        result,
        error,
        int(attempts),
        options,
        method_queue[1],
        int(priority),
        float(due) if due else None,
        None if owner is None else owner.decode(),
        float(created) if created else None,
        float(finished) if finished else None,
    )


_STATES = {state.encode(): state for state in (SCHEDULED, QUEUED, ASSIGNED, RETRY, FINISHED, FAILED, REVOKED)}
_decoded: dict[bytes, tuple[str, str]] = {}  # the end of a row -> (method, queue)


def held_key(base: str, broker_id: str) -> str:
    """The set of the tasks leased to broker ``broker_id`` ("" for a store that never attached)."""
    return f"{base}held:{broker_id}"


def names(method: str, queue: str) -> str:
    """The end of a task's row: its named queue's length in bytes (8 hex digits), the queue, the method."""
    return f"{len(queue.encode()):08x}{queue}{method}"


def lane(method: str, queue: str) -> str:
    """Where one method's tasks in one named queue lie in ``queue`` (the PRELUDE's ``lane``)."""
    return f"{len(method.encode()):08x}{method}{len(queue.encode()):08x}{queue}"


def pairs(reply: dict[bytes, bytes] | list[bytes]) -> Iterable[tuple[bytes, bytes]]:
    """The field-value pairs of a HGETALL reply: a flat list (RESP2), or a map (RESP3)."""
    return reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)


def score(value: float) -> str:
    """A time as a sorted-set score Redis parses exactly."""
    return "+inf" if value == float("inf") else "-inf" if value == float("-inf") else repr(value)
