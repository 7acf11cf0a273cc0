"""The scripts of a task's way through :class:`~zerotask.store.redis.RedisStore`: add, take and finish,
which every task goes through, so they are written for Redis' CPU (it shares the machine with the
broker): per task, a few string cuts and joins of its row (see :mod:`zerotask.store.redis_layout`) and
a few array appends, then one variadic command per key for the whole batch. A task found in an
unexpected shape (a QUEUED task finished, i.e. revoked) goes the general way of the other scripts
(``load``, ``leave``, ``enter``).

ARGV starts as every script's does (see :mod:`zerotask.store.redis_scripts`)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

from zerotask import jsonrpc
from zerotask.store.base import Outcome, TaskRecord, Want, want_parts
from zerotask.store.redis_layout import task_from_parts
from zerotask.wire import FAILED, FINISHED, REVOKED

# ARGV[4] token, ARGV[5] n, ARGV[6] m, then per task (ADD_FIELDS): id, its row's payload and the "|" after it
# (see redis_layout: its params, no outcome), the end of its row after the sequence
# ("|attempts|created_at|priority|due_at|names") and its lane with 9 - priority (where it goes in QUEUE,
# before the sequence); then m triples for the tasks that have a due_at or an owner: the task's place
# in the batch (from 1), due_at ("" for none), owner ("" or "+" .. owner). Most tasks have neither: they cost
# no arguments for them. A task due later than now is SCHEDULED, any other QUEUED. Answers one "1" (added)
# or "0" (refused: the id exists) per task. A batch sent again with the same token (its reply was lost, and
# more tasks may follow it) gets the answers it had.
ADD_FIELDS = 4
ADD = r"""
local token, n, m, now = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(NOW)
local flags = {}
local last = redis.call('GET', REPLY_ADD)
if last and string.sub(last, 1, #token + 1) == token .. '\n' then
  for i = #token + 2, #last do flags[#flags + 1] = string.sub(last, i, i) end
end
local dues, owned = {}, {}
for at = 7 + n * 4, 4 + n * 4 + m * 3, 3 do
  local i = tonumber(ARGV[at])
  if ARGV[at + 1] ~= '' then dues[i] = ARGV[at + 1] end
  if ARGV[at + 2] ~= '' then owned[i] = string.sub(ARGV[at + 2], 2) end
end
local first, ids = #flags + 1, {}
for i = first, n do ids[i - first + 1] = ARGV[3 + i * 4] end
local existing = mget(TASK, ids)
local rows, owners, queue, scheduled, live = {}, {}, {}, {}, {}
local k, kq, ks, ko = 0, 0, 0, 0
-- every task of the batch gets a number (one INCRBY), whether added or not: gaps do no harm
local seq = #ids > 0 and redis.call('INCRBY', NEXT, #ids) - #ids or 0
local seen, by_lane, added, later = {}, {}, 0, 0
-- a sequence number's 12 hex digits as 10 made once every 256 numbers and 2 looked up (string.format costs ~2,000
-- instructions a call); both are joined into the strings that hold them, as one concatenation each
local high, hex_high, HEX2 = -1, '', {[0] = @HEX2@}
for i = first, n do
  local at = 2 + i * 4
  local id = ARGV[at + 1]
  if existing[i - first + 1] or seen[id] then
    flags[i] = '0'
  else
    seen[id] = true
    seq = seq + 1
    local low, due = seq % 256, dues[i]
    if seq - low ~= high then high = seq - low; hex_high = string.format('%010x', high / 256) end
    local hex_low = HEX2[low]
    if due and tonumber(due) > now then
      rows[k + 1], rows[k + 2] = id, 'SCHEDULED|||' .. ARGV[at + 2] .. hex_high .. hex_low .. ARGV[at + 3]
      scheduled[ks + 1], scheduled[ks + 2], ks = due, hex_high .. hex_low .. id, ks + 2
      local kl = #live
      live[kl + 1], live[kl + 2] = string.match(ARGV[at + 3], '^|[^|]*|([^|]*)'), id  -- created_at
      later = later + 1
    else
      local l = ARGV[at + 4]
      rows[k + 1], rows[k + 2] = id, 'QUEUED|||' .. ARGV[at + 2] .. hex_high .. hex_low .. ARGV[at + 3]
      queue[kq + 1], queue[kq + 2], kq = '0', l .. hex_high .. hex_low .. id, kq + 2
      by_lane[l] = (by_lane[l] or 0) + 1
      added = added + 1
    end
    k = k + 2
    if owned[i] then owners[ko + 1], owners[ko + 2], ko = id, owned[i], ko + 2 end
    flags[i] = '1'
  end
end
if k > 0 then
  bulk('HSET', TASK, rows); bulk('HSET', OWNER, owners)
  bulk('ZADD', QUEUE, queue); bulk('ZADD', SCHEDULE, scheduled); bulk('ZADD', LIVE, live)
end
for l, c in pairs(by_lane) do count('QUEUED', string.sub(l, 9, 8 + tonumber(string.sub(l, 1, 8), 16)), c) end
count('SCHEDULED', nil, later)
redis.call('SET', REPLY_ADD, token .. '\n' .. table.concat(flags), 'PX', 3600000)
if added > 0 then publish('Q', {}) end
return done(table.concat(flags))
"""

# ARGV[4] token, ARGV[5] n, then the tokens of n take_many calls that raised (they may have run), then the
# number of wants, then per want: limit, the number of methods, the methods, the number of named queues, the
# queues. Answers a list per want of the tasks taken, the highest priority first, then the earliest
# submitted: TAKE_FIELDS values each, flat (id, row, params of a row without a payload or false, owner or
# false), as a table per task costs Redis more to send (it looks up a few names in each table of a reply).
TAKE_FIELDS = 4
TAKE = r"""
local doubt = {}
for i = 6, 5 + tonumber(ARGV[5]) do doubt[ARGV[i]] = true end
local token = redis.call('LINDEX', REPLY_TAKE, 0)  -- (see the end: the ids are read only if they are wanted)
if token and (token == ARGV[4] or doubt[token]) then
  do
    local saved, groups, answer, all = redis.call('LRANGE', REPLY_TAKE, 1, -1), {}, {}, {}
    local at = 2 + tonumber(saved[1])
    for w = 1, tonumber(saved[1]) do
      local ids = {}
      for j = 1, tonumber(saved[1 + w]) do ids[j], all[#all + 1], at = saved[at], saved[at], at + 1 end
      groups[w] = ids
    end
    preload(all, {TASK, PARAMS, OWNER})
    for w, ids in ipairs(groups) do
      answer[w] = {}
      for _, id in ipairs(ids) do
        local t = load(id)
        if t and t.state == 'ASSIGNED' and t.lease == ME then
          if token == ARGV[4] then  -- this very call, sent again: the same answer
            local r, k = record(t), #answer[w]
            answer[w][k + 1], answer[w][k + 2], answer[w][k + 3], answer[w][k + 4] = r[1], r[2], r[3], r[5]
          else  -- a call whose answer was lost: nobody holds what it took
            leave(t); enter(t, 'QUEUED')
          end
        end
      end
    end
    if token == ARGV[4] then return done(answer) end
    redis.call('DEL', REPLY_TAKE)
    sync()  -- what it queued again is in QUEUE before the wants below read it
  end
end
local answer, groups, at, any = {}, {}, 7 + tonumber(ARGV[5]), false
for w = 1, tonumber(ARGV[6 + tonumber(ARGV[5])]) do
  local limit, k = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local q = tonumber(ARGV[at + 2 + k])
  local lanes_found, members, ids, methods = {}, {}, {}, {}
  if limit > 0 then
    for j = at + 2, at + 1 + k do
      for i = at + 3 + k, at + 2 + k + q do
        local p = lane(ARGV[j], ARGV[i])
        local r = redis.call('ZRANGEBYLEX', QUEUE, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, limit)
        if #r > 0 then lanes_found[#lanes_found + 1] = {p, ARGV[j], r} end
      end
    end
  end
  if #lanes_found == 1 then  -- one method in one named queue: QUEUE has them in the order to take them
    local skip, method = #lanes_found[1][1] + 14, lanes_found[1][2]
    members = lanes_found[1][3]
    for i = 1, #members do ids[i], methods[i] = string.sub(members[i], skip), method end
  elseif #lanes_found > 1 then
    local found = {}
    for _, f in ipairs(lanes_found) do
      local p = f[1]
      for _, m in ipairs(f[3]) do
        -- 9 - priority, then the sequence, as one number (exact: under 2^53) for a quick sort
        local order = tonumber(string.sub(m, #p + 1, #p + 1)) * 2^48 + tonumber(string.sub(m, #p + 2, #p + 13), 16)
        found[#found + 1] = {order, m, string.sub(m, #p + 14), f[2]}
      end
    end
    table.sort(found, function(a, b) return a[1] < b[1] end)
    for i = 1, math.min(limit, #found) do members[i], ids[i], methods[i] = found[i][2], found[i][3], found[i][4] end
  end
  local rows, params, owners = mget(TASK, ids), {}, {}
  if #ids > 0 and redis.call('EXISTS', OWNER) == 1 then owners = mget(OWNER, ids) end  -- (only with CURVE)
  if #ids > 0 and redis.call('EXISTS', PARAMS) == 1 then params = mget(PARAMS, ids) end  -- (rows without a payload)
  local records, taken, new_rows, by_method, kr = {}, {}, {}, {}, 0
  for i = 1, #ids do
    local id, row = ids[i], rows[i]
    -- QUEUED, with no lease and no finished_at, as every QUEUED task is (else it is dropped from QUEUE)
    if row and string.find(row, 'QUEUED|||', 1, true) == 1 then
      local new = 'ASSIGNED|' .. ME .. '||' .. string.sub(row, 10)
      local n = #new_rows
      new_rows[n + 1], new_rows[n + 2] = id, new
      records[kr + 1], records[kr + 2], records[kr + 3], records[kr + 4] = id, new, params[i] or false, owners[i] or false
      kr = kr + 4
      taken[#taken + 1] = id
      by_method[methods[i]] = (by_method[methods[i]] or 0) + 1
    end
  end
  for method, n in pairs(by_method) do count('QUEUED', method, -n) end
  bulk('ZREM', QUEUE, members)  -- before the next want looks
  bulk('HSET', TASK, new_rows)
  bulk('SADD', MINE, taken)
  count('ASSIGNED', nil, #taken)
  answer[w], groups[w], any = records, taken, any or #taken > 0
  at = at + 3 + k + q
end
if any then  -- what this call took, for the same call sent again: a list of its token, the wants' counts and the ids
  leased = true
  local saved = {ARGV[4], #groups}
  for w = 1, #groups do saved[w + 2] = #groups[w] end
  for w = 1, #groups do
    for _, id in ipairs(groups[w]) do saved[#saved + 1] = id end
  end
  redis.call('DEL', REPLY_TAKE)
  bulk('RPUSH', REPLY_TAKE, saved)
  redis.call('PEXPIRE', REPLY_TAKE, 3600000)
end
return done(answer)
"""

# ARGV[4] token, ARGV[5] n, ARGV[6] the outcomes' states, a letter each (STATE_LETTERS), or one letter if
# they all have one state (most calls: the script does not look up each), then per outcome:
# task id, outcome JSON. Answers "1" or "0" per outcome; the same call sent again (its answer was lost on
# the way) gets the same answers.
STATE_LETTERS = {FINISHED: "F", FAILED: "E", REVOKED: "R"}  # a final state in the finish script's ARGV[6]
FINISH = r"""
local last = redis.call('GET', REPLY_FINISH)
if last and string.sub(last, 1, #ARGV[4] + 1) == ARGV[4] .. '\n' then return done(string.sub(last, #ARGV[4] + 2)) end
local n, ids, letters = tonumber(ARGV[5]), {}, ARGV[6]
local STATE_OF = {[string.byte('F')] = 'FINISHED', [string.byte('E')] = 'FAILED', [string.byte('R')] = 'REVOKED'}
local every = #letters == 1 and STATE_OF[string.byte(letters)]  -- one state for all
for i = 1, n do ids[i] = ARGV[5 + i * 2] end
local rows = mget(TASK, ids)
local flags, recorded, seen, left, entered = {}, {}, {}, {}, {}
local new_rows, released, old, ended, outcomes, params = {}, {}, {}, {}, {}, {}
local legacy = old_held()
for i = 1, n do
  local id, state, row, outcome = ids[i], every or STATE_OF[string.byte(letters, i)], rows[i], ARGV[6 + i * 2]
  local cut = row and not seen[id] and string.find(row, '|', 1, true)
  local was = cut and string.sub(row, 1, cut - 1)
  if not was or FINAL[was] then
    flags[i] = '0'
  else
    seen[id] = true
    local cut2 = string.find(row, '|', cut + 1, true)
    local after, payload = string.byte(row, cut2 + 1, cut2 + 2)
    if LEASED[was] and after == 124 then  -- held, no finished_at: cut and join its row
      released[#released + 1] = id  -- (if another broker holds it now, this broker's set held it for nothing)
      if legacy then old[#old + 1] = string.sub(row, cut + 1, cut2 - 1) .. '|' .. id end
      local k, new = #new_rows, nil
      if payload == 31 then  -- the outcome goes in the row's payload, after the params it keeps
        local p = string.find(row, '\31', cut2 + 3, true)  -- after the params, then the outcome: none while held
        local kept = state == 'FINISHED' and '' or string.sub(row, cut2 + 3, p - 1)
        new = state .. '||' .. NOW .. '|\31' .. kept .. '\31' .. outcome .. string.sub(row, p + 1)
      else  -- a row without a payload (a version before wrote it): the outcome goes in OUTCOME
        new = state .. '||' .. NOW .. string.sub(row, cut2 + 1)
        local ko = #outcomes
        outcomes[ko + 1], outcomes[ko + 2] = id, outcome
        if state == 'FINISHED' then params[#params + 1] = id end
      end
      new_rows[k + 1], new_rows[k + 2] = id, new
      if not ended[state] then ended[state] = {} end
      k = #ended[state]
      ended[state][k + 1], ended[state][k + 2] = NOW, id
      left[was], entered[state] = (left[was] or 0) + 1, (entered[state] or 0) + 1
    else  -- QUEUED or SCHEDULED: revoked before it ran
      local t = load(id)
      leave(t)
      t.finished = NOW
      set_outcome(t, state, outcome)
      enter(t, state)
    end
    flags[i] = '1'
    recorded[#recorded + 1] = id
  end
end
for state, c in pairs(left) do count(state, nil, -c) end
for state, c in pairs(entered) do count(state, nil, c) end
bulk('HSET', TASK, new_rows)
bulk('SREM', MINE, released)
bulk('ZREM', HELD, old)
for state, values in pairs(ended) do bulk('ZADD', ENDED[state], values) end
bulk('HSET', OUTCOME, outcomes)
bulk('HDEL', PARAMS, params)
if #recorded > 0 then publish('F', recorded) end
redis.call('SET', REPLY_FINISH, ARGV[4] .. '\n' .. table.concat(flags), 'PX', 3600000)
return done(table.concat(flags))
"""

ADD = ADD.replace("@HEX2@", ", ".join(f"'{byte:02x}'" for byte in range(256)))
FLOW_SCRIPTS = {"add": ADD, "take": TAKE, "finish": FINISH}


def finish_args(outcomes: Sequence[Outcome]) -> list[Any]:
    """The finish script's ARGV after the common ones: a token, the count, the states, then id and outcome each."""
    args: list[Any] = [uuid.uuid4().hex, len(outcomes), ""]
    letters = []
    for outcome in outcomes:
        letter = STATE_LETTERS.get(outcome.state)
        if letter is None:
            raise ValueError(f"an outcome is FINISHED, FAILED or REVOKED, not {outcome.state}")
        letters.append(letter)
        value = {"error": outcome.error} if outcome.error is not None else {"result": outcome.result}
        args += [outcome.task_id, b"%s" % jsonrpc.dumps(value)]  # (see WriteBuffer.add: a copy)
    args[2] = letters[0] if len(set(letters)) == 1 else "".join(letters)
    return args


def recorded_flags(flags: bytes) -> list[bool]:
    """Whether each outcome was recorded, from the finish script's answer."""
    return [flag == ord("1") for flag in flags]


def take_args(token: str, in_doubt: Collection[str], wants: Sequence[Want]) -> list[Any]:
    """The take script's ARGV after the common ones: its token, the takes in doubt, then each want."""
    args: list[Any] = [token, len(in_doubt), *in_doubt, len(wants)]
    for want in wants:
        methods, limit, queues = want_parts(want)
        names, lanes = list(dict.fromkeys(methods)), list(dict.fromkeys(queues))
        args += [limit, len(names), *names, len(lanes), *lanes]
    return args


def taken_tasks(flat: list[Any]) -> list[TaskRecord]:
    """The tasks of one want from the take script's answer (TAKE_FIELDS values each)."""
    return [task_from_parts(flat[i], flat[i + 1], flat[i + 2], None, flat[i + 3]) for i in range(0, len(flat), TAKE_FIELDS)]
