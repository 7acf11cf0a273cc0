"""The Lua scripts of :class:`~zerotask.store.redis.RedisStore`: one atomic script per store operation.

Every script gets the same KEYS (:data:`KEY_NAMES`, in that order, then any per-call keys), all under
one hash tag, so that a script touches one slot (Redis Cluster). The tasks live in a few hashes keyed
by task id rather than in a key per task, so that no script touches a key it was not given. ARGV
starts with ``me`` (this broker's id, "" before attach), ``now`` (time.time() in Python: the tests
move the clock) and the channel to publish on.

A task's ``meta`` field is ``state|attempts|seq|created_at|finished_at|lease|method`` (the method last:
it may hold any character; a broker id holds no "|"). Times stay strings end to end, as Python wrote
them, so they come back exact. The queue is one sorted set ordered by member (all scores 0): a member
is the method's length (8 hex digits), the method, the sequence (12 hex digits) and the task id, so one
method's tasks are a range, oldest first. ``held`` is ordered the same way by ``lease|id``: one
broker's tasks are a range, for :meth:`reclaim`.

Mutating scripts return ``{answer, queued counts as HGETALL}``: the store keeps the counts without
asking again.
"""

from __future__ import annotations

# The keys every script gets, as KEYS[1..n]: suffixes after "<prefix>:{<queue>}:".
KEY_NAMES = (
    "meta",  # hash: task id -> state|attempts|seq|created_at|finished_at|lease|method
    "params",  # hash: task id -> JSON [args, kwargs, options] (gone once FINISHED)
    "outcome",  # hash: task id -> JSON {"result": ...} or {"error": ...}
    "owner",  # hash: task id -> the key that submitted it (only when there is one)
    "queue",  # sorted set by member: the QUEUED tasks, one range per method, oldest first
    "live",  # sorted set: unfinished task id -> created_at (for listings)
    "ended:FINISHED",  # sorted sets: final task id -> finished_at (listings, expire)
    "ended:FAILED",
    "ended:REVOKED",
    "held",  # sorted set by member: lease|id of ASSIGNED and RETRY tasks
    "queued",  # hash: method -> how many QUEUED
    "states",  # hash: state -> how many (QUEUED aside)
    "next",  # the last sequence number given
    "brokers",  # set: broker ids that attached
    "reply:add",  # the last add batch of this store: its token and answers (replays are answered alike)
    "reply:take",  # the last take_many of this store: its token and the ids it took
)

_PRELUDE = r"""
local META, PARAMS, OUTCOME, OWNER, QUEUE, LIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ENDED = {FINISHED = KEYS[7], FAILED = KEYS[8], REVOKED = KEYS[9]}
local HELD, QUEUED, STATES, NEXT, BROKERS = KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local REPLY_ADD, REPLY_TAKE = KEYS[15], KEYS[16]
local ME, NOW, CHANNEL = ARGV[1], ARGV[2], ARGV[3]
local FINAL = {FINISHED = true, FAILED = true, REVOKED = true}
local LEASED = {ASSIGNED = true, RETRY = true}
local queued_delta, states_delta = {}, {}

local function load(id)
  local m = redis.call('HGET', META, id)
  if not m then return nil end
  local t = {id = id}
  t.state, t.attempts, t.seq, t.created, t.finished, t.lease, t.method =
    string.match(m, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  return t
end

local function prefix(method) return string.format('%08x', #method) .. method end
local function member(t) return prefix(t.method) .. string.format('%012x', tonumber(t.seq)) .. t.id end

local function count(state, method, n)
  if state == 'QUEUED' then queued_delta[method] = (queued_delta[method] or 0) + n
  else states_delta[state] = (states_delta[state] or 0) + n end
end

-- take a task out of its state (its index and its count)
local function leave(t)
  if t.state == 'QUEUED' then redis.call('ZREM', QUEUE, member(t))
  elseif LEASED[t.state] then redis.call('ZREM', HELD, t.lease .. '|' .. t.id)
  elseif FINAL[t.state] then redis.call('ZREM', ENDED[t.state], t.id) end
  count(t.state, t.method, -1)
end

-- put a task in a state and write it: a held task is leased to this broker
local function enter(t, state)
  t.state, t.lease = state, ''
  if state == 'QUEUED' then redis.call('ZADD', QUEUE, 0, member(t))
  elseif LEASED[state] then t.lease = ME; redis.call('ZADD', HELD, 0, ME .. '|' .. t.id)
  else redis.call('ZADD', ENDED[state], t.finished, t.id); redis.call('ZREM', LIVE, t.id) end
  count(state, t.method, 1)
  redis.call('HSET', META, t.id, table.concat({t.state, t.attempts, t.seq, t.created, t.finished, t.lease, t.method}, '|'))
end

-- a task as the store returns it: id, state, attempts, created_at, finished_at, method, params, outcome, owner
local function record(t)
  return {t.id, t.state, t.attempts, t.created, t.finished, t.method,
    redis.call('HGET', PARAMS, t.id), redis.call('HGET', OUTCOME, t.id), redis.call('HGET', OWNER, t.id)}
end

local function apply(key, delta)
  for field, n in pairs(delta) do
    if n ~= 0 and redis.call('HINCRBY', key, field, n) <= 0 then redis.call('HDEL', key, field) end
  end
end

-- the answer of a mutating script, with the queued counts after it
local function done(answer)
  apply(QUEUED, queued_delta)
  apply(STATES, states_delta)
  return {answer, redis.call('HGETALL', QUEUED)}
end

local function publish(kind, ids)
  redis.call('PUBLISH', CHANNEL, cjson.encode({kind, ME, ids}))
end
"""

# ARGV[4] token, ARGV[5] n, then per task: id, method, params, owner ("" or "+" .. owner), created_at, attempts.
# Answers one "1" (added) or "0" (refused: the id exists) per task. A batch sent again with the same token
# (its reply was lost, and more tasks may follow it) gets the answers it had.
ADD = r"""
local token, n = ARGV[4], tonumber(ARGV[5])
local flags = {}
local last = redis.call('GET', REPLY_ADD)
if last and string.sub(last, 1, #token + 1) == token .. '\n' then
  for i = #token + 2, #last do flags[#flags + 1] = string.sub(last, i, i) end
end
local added = 0
for i = #flags + 1, n do
  local at = 5 + (i - 1) * 6
  local id = ARGV[at + 1]
  if redis.call('HEXISTS', META, id) == 1 then
    flags[i] = '0'
  else
    local seq = string.format('%d', redis.call('INCR', NEXT))
    local t = {id = id, method = ARGV[at + 2], attempts = ARGV[at + 6], seq = seq, created = ARGV[at + 5], finished = '',
      lease = '', state = ''}
    redis.call('HSET', PARAMS, id, ARGV[at + 3])
    if ARGV[at + 4] ~= '' then redis.call('HSET', OWNER, id, string.sub(ARGV[at + 4], 2)) end
    redis.call('ZADD', LIVE, t.created, id)
    enter(t, 'QUEUED')
    flags[i] = '1'
    added = added + 1
  end
end
redis.call('SET', REPLY_ADD, token .. '\n' .. table.concat(flags), 'PX', 3600000)
if added > 0 then publish('Q', {}) end
return done(table.concat(flags))
"""

# ARGV[4] token, ARGV[5] n, then the tokens of n take_many calls that raised (they may have run), then the
# number of wants, then per want: limit, the number of methods, the methods. Answers a list of records per want.
TAKE = r"""
local doubt = {}
for i = 6, 5 + tonumber(ARGV[5]) do doubt[ARGV[i]] = true end
local last = redis.call('GET', REPLY_TAKE)
if last then
  local cut = string.find(last, '\n', 1, true)
  local token, groups = string.sub(last, 1, cut - 1), cjson.decode(string.sub(last, cut + 1))
  if token == ARGV[4] or doubt[token] then
    local answer = {}
    for w, ids in ipairs(groups) do
      answer[w] = {}
      for _, id in ipairs(ids) do
        local t = load(id)
        if t and t.state == 'ASSIGNED' and t.lease == ME then
          if token == ARGV[4] then  -- this very call, sent again: the same answer
            answer[w][#answer[w] + 1] = record(t)
          else  -- a call whose answer was lost: nobody holds what it took
            leave(t); enter(t, 'QUEUED')
          end
        end
      end
    end
    if token == ARGV[4] then return done(answer) end
    redis.call('DEL', REPLY_TAKE)
  end
end
local answer, groups, at = {}, {}, 7 + tonumber(ARGV[5])
for w = 1, tonumber(ARGV[6 + tonumber(ARGV[5])]) do
  local limit, k = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local found = {}
  if limit > 0 then
    for j = at + 2, at + 1 + k do
      local p = prefix(ARGV[j])
      for _, m in ipairs(redis.call('ZRANGEBYLEX', QUEUE, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, limit)) do
        found[#found + 1] = {tonumber(string.sub(m, #p + 1, #p + 12), 16), string.sub(m, #p + 13)}
      end
    end
    table.sort(found, function(a, b) return a[1] < b[1] end)
  end
  answer[w], groups[w] = {}, {}
  for i = 1, math.min(limit, #found) do
    local t = load(found[i][2])
    leave(t); enter(t, 'ASSIGNED')
    answer[w][i] = record(t)
    groups[w][i] = t.id
  end
  at = at + 2 + k
end
for _, ids in ipairs(groups) do
  if #ids > 0 then
    redis.call('SET', REPLY_TAKE, ARGV[4] .. '\n' .. cjson.encode(groups), 'PX', 3600000)
    break
  end
end
return done(answer)
"""

# ARGV[4..] task ids.
CLAIM = r"""
local answer = {}
for i = 4, #ARGV do
  local t = load(ARGV[i])
  if t and not FINAL[t.state] then
    leave(t); enter(t, 'ASSIGNED')
    answer[#answer + 1] = record(t)
  end
end
return done(answer)
"""

# ARGV[4..] task ids.
REQUEUE = r"""
local n = 0
for i = 4, #ARGV do
  local t = load(ARGV[i])
  if t and LEASED[t.state] then
    leave(t); enter(t, 'QUEUED')
    n = n + 1
  end
end
if n > 0 then publish('Q', {}) end
return done(n)
"""

# ARGV[4] task id, ARGV[5] attempts.
RETRY = r"""
local t = load(ARGV[4])
if t and not FINAL[t.state] then
  leave(t)
  t.attempts = ARGV[5]
  enter(t, 'RETRY')
end
return done(0)
"""

# ARGV[4] n, then per outcome: task id, state, outcome JSON. Answers "1" or "0" per outcome.
FINISH = r"""
local flags, recorded = {}, {}
for i = 1, tonumber(ARGV[4]) do
  local at = 4 + (i - 1) * 3
  local t = load(ARGV[at + 1])
  if t and not FINAL[t.state] then
    leave(t)
    t.finished = NOW
    redis.call('HSET', OUTCOME, t.id, ARGV[at + 3])
    if ARGV[at + 2] == 'FINISHED' then redis.call('HDEL', PARAMS, t.id) end
    enter(t, ARGV[at + 2])
    flags[i] = '1'
    recorded[#recorded + 1] = t.id
  else
    flags[i] = '0'
  end
end
if #recorded > 0 then publish('F', recorded) end
return done(table.concat(flags))
"""

# ARGV[4] before (exclusive), ARGV[5] limit. Forgets the oldest outcomes first.
EXPIRE = r"""
local limit, found = tonumber(ARGV[5]), {}
for _, key in pairs(ENDED) do
  local r = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[4], 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #r, 2 do found[#found + 1] = {tonumber(r[i + 1]), r[i]} end
end
table.sort(found, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
local n = math.min(limit, #found)
for i = 1, n do
  local t = load(found[i][2])
  leave(t)
  for _, key in ipairs({META, PARAMS, OUTCOME, OWNER}) do redis.call('HDEL', key, t.id) end
end
return done(n)
"""

# ARGV[4] task id. Answers 1 if the FAILED or REVOKED task is queued again, at the back.
RESET = r"""
local t = load(ARGV[4])
if not t or (t.state ~= 'FAILED' and t.state ~= 'REVOKED') then return done(0) end
leave(t)
redis.call('HDEL', OUTCOME, t.id)
t.seq, t.attempts, t.created, t.finished = string.format('%d', redis.call('INCR', NEXT)), '0', NOW, ''
redis.call('ZADD', LIVE, t.created, t.id)
enter(t, 'QUEUED')
publish('Q', {})
return done(1)
"""

# ARGV[4] limit, then broker ids; KEYS after KEY_NAMES are their liveness keys, in the same order.
# Queues again, in their old places, up to limit tasks leased to brokers whose liveness key is gone (to
# "" always: a store that never attached holds no lease). A broker with nothing left is forgotten.
RECLAIM = r"""
local left, n, base = tonumber(ARGV[4]), 0, #KEYS - (#ARGV - 4)
for i = 5, #ARGV do
  local broker = ARGV[i]
  if left <= 0 then break end
  if (broker ~= ME or ME == '') and (broker == '' or redis.call('EXISTS', KEYS[base + i - 4]) == 0) then
    local p = broker .. '|'
    local members = redis.call('ZRANGEBYLEX', HELD, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, left)
    for _, m in ipairs(members) do
      local t = load(string.sub(m, #p + 1))
      if t and LEASED[t.state] and t.lease == broker then
        leave(t); enter(t, 'QUEUED')
        n = n + 1
      else
        redis.call('ZREM', HELD, m)
      end
    end
    if #members < left and broker ~= '' then redis.call('SREM', BROKERS, broker) end
    left = left - #members
  end
end
if n > 0 then publish('Q', {}) end
return done(n)
"""

# ARGV[4..] task ids. Answers a record, or false, per id.
GET = r"""
local answer = {}
for i = 4, #ARGV do
  local t = load(ARGV[i])
  answer[i - 3] = t and record(t) or false
end
return answer
"""

# ARGV[4..] methods. Answers the created_at of each method's first task in line, or false.
OLDEST = r"""
local answer = {}
for i = 4, #ARGV do
  local p = prefix(ARGV[i])
  local first = redis.call('ZRANGEBYLEX', QUEUE, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, 1)[1]
  local t = first and load(string.sub(first, #p + 13))
  answer[i - 3] = t and t.created or false
end
return answer
"""

# ARGV[4] state or "", ARGV[5] method or "", ARGV[6] limit, ARGV[7] before (exclusive) or "+inf".
# Newest first. Looks at no more than SCAN tasks of each sorted set it reads (a filter that matches
# few tasks among many lists fewer than it could rather than block Redis).
LIST = r"""
local state, method, limit, before = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local SCAN, CHUNK = 100000, 500
local found = {}
local function scan(key)
  local start = before == '+inf' and 0 or redis.call('ZCOUNT', key, before, '+inf')
  local mine, seen = 0, 0
  while mine < limit and seen < SCAN do
    local r = redis.call('ZREVRANGE', key, start + seen, start + seen + CHUNK - 1, 'WITHSCORES')
    if #r == 0 then break end
    for i = 1, #r, 2 do
      local t = load(r[i])
      if t and (state == '' or t.state == state) and (method == '' or t.method == method) and mine < limit then
        found[#found + 1] = {tonumber(r[i + 1]), t.id, t}
        mine = mine + 1
      end
    end
    seen = seen + #r / 2
  end
end
if limit <= 0 then return {} end
if state == '' then
  scan(LIVE); for _, key in pairs(ENDED) do scan(key) end
elseif FINAL[state] then scan(ENDED[state])
elseif state == 'QUEUED' or LEASED[state] then scan(LIVE) end
table.sort(found, function(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end)
local answer = {}
for i = 1, math.min(limit, #found) do answer[i] = record(found[i][3]) end
return answer
"""

SCRIPTS = {
    "add": ADD,
    "take": TAKE,
    "claim": CLAIM,
    "requeue": REQUEUE,
    "retry": RETRY,
    "finish": FINISH,
    "expire": EXPIRE,
    "reset": RESET,
    "reclaim": RECLAIM,
    "get": GET,
    "oldest": OLDEST,
    "list": LIST,
}


def source(name: str) -> str:
    """The full Lua source of the script ``name``: the shared helpers, then the script."""
    return _PRELUDE + SCRIPTS[name]
