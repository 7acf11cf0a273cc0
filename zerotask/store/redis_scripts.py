"""The Lua scripts of :class:`~zerotask.store.redis.RedisStore`: one atomic script per store operation,
each run after the helpers of :mod:`zerotask.store.redis_layout` (which says how the tasks lie in Redis).
Add, take and finish, which every task goes through, are in :mod:`zerotask.store.redis_flow`.

ARGV starts with ``me`` (this broker's id, "" before attach), ``now`` (time.time() in Python: the tests
move the clock) and the channel to publish on; what follows is each script's own, as its comment says.
"""

from __future__ import annotations

from zerotask.store.redis_flow import FLOW_SCRIPTS
from zerotask.store.redis_layout import PRELUDE
from zerotask.store.redis_registry import REGISTRY_SCRIPTS

# ARGV[4..] task ids. A SCHEDULED task is left alone: no node can have it.
CLAIM = r"""
local answer = {}
preload(args_from(4), {TASK, PARAMS, OWNER})
for i = 4, #ARGV do
  local t = load(ARGV[i])
  if t and not FINAL[t.state] and t.state ~= 'SCHEDULED' then
    leave(t); enter(t, 'ASSIGNED')
    answer[#answer + 1] = record(t)
  end
end
return done(answer)
"""

# ARGV[4..] task ids. Once attached, only this broker's own: a task another broker holds now (it claimed
# it from a node that moved there, or reclaimed it) stays where it is.
REQUEUE = r"""
local n = 0
preload(args_from(4), {TASK})
for i = 4, #ARGV do
  local t = load(ARGV[i])
  if t and LEASED[t.state] and (ME == '' or t.lease == ME) then
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

# ARGV[4] before (exclusive), ARGV[5] limit. Forgets the oldest outcomes first.
EXPIRE = r"""
local limit, found = tonumber(ARGV[5]), {}
for _, key in pairs(ENDED) do
  local r = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[4], 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #r, 2 do found[#found + 1] = {tonumber(r[i + 1]), r[i]} end
end
table.sort(found, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
local n, ids = math.min(limit, #found), {}
for i = 1, n do ids[i] = found[i][2] end
preload(ids, {TASK})
for i = 1, n do
  local t = load(ids[i])
  leave(t)
  put('h', TASK, t.id, false); put('h', OWNER, t.id, false)
  if not t.params then put('h', PARAMS, t.id, false); put('h', OUTCOME, t.id, false) end  -- (a row without a payload)
  put('z', LIVE, t.id, false)  -- (an id a version before left there)
end
return done(n)
"""

# ARGV[4] task id. Answers 1 if the FAILED or REVOKED task is queued again, at the back.
RESET = r"""
local t = load(ARGV[4])
if not t or (t.state ~= 'FAILED' and t.state ~= 'REVOKED') then return done(0) end
leave(t)
if t.params then t.outcome = '' else put('h', OUTCOME, t.id, false) end
t.seq, t.attempts, t.created, t.finished, t.due = new_seq(), '0', NOW, '', ''
enter(t, 'QUEUED')
publish('Q', {})
return done(1)
"""

# ARGV[4] now, ARGV[5] limit. Queues the SCHEDULED tasks due by now, the earliest first, each in the place of
# its submission. Brokers that call it at once each queue other tasks.
DUE = r"""
local limit, n, ids = tonumber(ARGV[5]), 0, {}
if limit <= 0 then return done(0) end
local members = redis.call('ZRANGEBYSCORE', SCHEDULE, '-inf', ARGV[4], 'LIMIT', 0, limit)
for j, m in ipairs(members) do ids[j] = string.sub(m, 13) end
preload(ids, {TASK})
for j, m in ipairs(members) do
  local t = load(ids[j])
  if t and t.state == 'SCHEDULED' then
    leave(t); enter(t, 'QUEUED')
    n = n + 1
  else
    put('z', SCHEDULE, m, false)
  end
end
if n > 0 then publish('Q', {}) end
return done(n)
"""

# Answers the due_at of the earliest SCHEDULED task (as Redis writes a score: exact), or false.
NEXT_DUE = r"""
return redis.call('ZRANGE', SCHEDULE, 0, 0, 'WITHSCORES')[2] or false
"""

# ARGV[4] limit, ARGV[5] "1" to reclaim this broker's own tasks too (it starts: no node holds them), then
# broker ids; KEYS after KEY_NAMES and MINE are their liveness keys, then their sets of held tasks, in the
# same order. Queues again, in their old places, up to limit tasks leased to brokers whose liveness key is
# gone (to "" always: a store that never attached holds no lease), from their sets and from HELD (a version
# before kept them there). A gone broker with nothing left is forgotten. Then drops from this broker's own
# set a few ids of tasks no longer leased to it (another broker claimed or finished them). Answers how
# many it queued, and how many ids it took out of those sets (queued, or no longer leased to that broker).
RECLAIM = r"""
local left, n, mine, count = tonumber(ARGV[4]), 0, ARGV[5] == '1', #ARGV - 5
local looked = 0
local base = #KEYS - 2 * count
for i = 6, #ARGV do
  local broker = ARGV[i]
  if left <= 0 then break end
  if broker == '' or (broker == ME and mine) or (broker ~= ME and redis.call('EXISTS', KEYS[base + i - 5]) == 0) then
    sync()
    local set = KEYS[base + count + i - 5]
    local ids = redis.call('SRANDMEMBER', set, left)  -- (removed as the other writes are: at the end)
    for _, id in ipairs(ids) do put('s', set, id, false) end
    if #ids < left and old_held() then
      local p = broker .. '|'
      for _, m in ipairs(redis.call('ZRANGEBYLEX', HELD, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, left - #ids)) do
        ids[#ids + 1] = string.sub(m, #p + 1)
        put('z', HELD, m, false)
      end
    end
    preload(ids, {TASK})
    for _, id in ipairs(ids) do
      local t = load(id)
      if t and LEASED[t.state] and t.lease == broker then
        leave(t); enter(t, 'QUEUED')
        n = n + 1
      end
    end
    if #ids < left and broker ~= '' and broker ~= ME then redis.call('SREM', BROKERS, broker) end
    left, looked = left - #ids, looked + #ids
  end
end
if not mine then
  sync()
  local ids = redis.call('SRANDMEMBER', MINE, 32)
  preload(ids, {TASK})
  for _, id in ipairs(ids) do
    local t = load(id)
    if not (t and LEASED[t.state] and t.lease == ME) then put('s', MINE, id, false) end
  end
end
if n > 0 then publish('Q', {}) end
return done({n, looked})
"""

# ARGV[4..] task ids. Answers a record, or false, per id.
GET = r"""
local answer = {}
preload(args_from(4), {TASK, PARAMS, OUTCOME, OWNER})
for i = 4, #ARGV do
  local t = load(ARGV[i])
  answer[i - 3] = t and record(t) or false
end
return answer
"""

# ARGV[4..] methods. Answers, per method, the earliest created_at of the first tasks in line of its named
# queues (one lookup per queue that has some), or false.
OLDEST = r"""
local answer = {}
for i = 4, #ARGV do
  local p, oldest = prefix(ARGV[i]), false
  local from = '[' .. p
  while true do
    local first = redis.call('ZRANGEBYLEX', QUEUE, from, '(' .. p .. '\255', 'LIMIT', 0, 1)[1]
    if not first then break end
    local head = #p + 8 + tonumber(string.sub(first, #p + 1, #p + 8), 16)  -- the lane's length
    local t = load(string.sub(first, head + 14))
    if t and (not oldest or tonumber(t.created) < tonumber(oldest)) then oldest = t.created end
    from = '(' .. string.sub(first, 1, head) .. '\255'  -- the next named queue
  end
  answer[i - 3] = oldest
end
return answer
"""

# ARGV[4] state or "", ARGV[5] method or "", ARGV[6] limit, ARGV[7] before (exclusive) or "+inf", then the
# brokers' ids; KEYS after KEY_NAMES and MINE are their sets of held tasks, in the same order.
# Newest first: a final task by finished_at (from its ENDED set), an unfinished one by created_at: the
# SCHEDULED ones from LIVE, the QUEUED ones where they wait, each lane and priority of QUEUE read from its
# end (the latest sequence, so the latest created_at, as one broker's clock goes) until it gave limit tasks,
# the held ones (few: what nodes hold) from each broker's set and HELD, read whole. Looks at no more than SCAN tasks of each set
# (of each lane and priority in QUEUE): a filter that matches few tasks among many lists fewer than it
# could rather than block Redis.
LIST = r"""
local state, method, limit, before = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local SCAN, CHUNK = 100000, 500
local cutoff = before == '+inf' and math.huge or tonumber(before)
local found, listed = {}, {}  -- (listed: a held task may be in two sets, see redis_layout)
-- the tasks `ids` in the state `where` (a set of states) and the filters, created before the cutoff, up to
-- `room` of them (newest first if `ids` are); answers how many
local function unfinished(ids, where, room)
  preload(ids, {TASK})
  local mine = 0
  for _, id in ipairs(ids) do
    local t = not listed[id] and load(id)
    if mine >= room then break end
    if t and where[t.state] and (state == '' or t.state == state) and (method == '' or t.method == method) then
      local created = tonumber(t.created)
      if created < cutoff then found[#found + 1] = {created, id, t}; mine = mine + 1; listed[id] = true end
    end
  end
  return mine
end
-- read `key` by `range(start, stop)` in chunks, handing the ids (after `skip` bytes of a member, or after
-- its first "|") to unfinished(), until it gave `room` tasks or SCAN were seen
local function read(range, skip, where, room)
  local seen = 0
  while room > 0 and seen < SCAN do
    local members, ids = range(seen, seen + math.min(CHUNK, room) - 1), {}
    if #members == 0 then break end
    for i, m in ipairs(members) do ids[i] = string.sub(m, skip or string.find(m, '|', 1, true) + 1) end
    room = room - unfinished(ids, where, room)
    seen = seen + #members
  end
end
local function queued()
  local p = method == '' and '' or prefix(method)
  local from, to = p == '' and '-' or '[' .. p, p == '' and '+' or '(' .. p .. '\255'
  while true do
    local first = redis.call('ZRANGEBYLEX', QUEUE, from, to, 'LIMIT', 0, 1)[1]
    if not first then break end
    local n = tonumber(string.sub(first, 1, 8), 16)
    local head = 17 + n + tonumber(string.sub(first, 9 + n, 16 + n), 16)  -- the lane and the priority
    local lane_rank = string.sub(first, 1, head)
    local top, bottom = '(' .. lane_rank .. '\255', '[' .. lane_rank
    read(function(start, stop) return redis.call('ZREVRANGEBYLEX', QUEUE, top, bottom, 'LIMIT', start, stop - start + 1) end,
      head + 13, {QUEUED = true}, limit)
    from = top
  end
end
-- the newest tasks of `key` (by score) in a state of `where` (any, if nil) and the filters
local function newest(key, where)
  local start = before == '+inf' and 0 or redis.call('ZCOUNT', key, before, '+inf')
  local mine, seen = 0, 0
  while mine < limit and seen < SCAN do
    local r = redis.call('ZREVRANGE', key, start + seen, start + seen + CHUNK - 1, 'WITHSCORES')
    if #r == 0 then break end
    local ids = {}
    for i = 1, #r, 2 do ids[#ids + 1] = r[i] end
    preload(ids, {TASK})
    for i = 1, #r, 2 do
      local t = load(r[i])
      local wanted = t and (not where or where[t.state]) and (state == '' or t.state == state)
      if wanted and (method == '' or t.method == method) and mine < limit then
        found[#found + 1] = {tonumber(r[i + 1]), t.id, t}
        mine = mine + 1
      end
    end
    seen = seen + #r / 2
  end
end
if limit <= 0 then return {} end
if state == '' or state == 'QUEUED' then queued() end
if state == '' or state == 'SCHEDULED' then newest(LIVE, {SCHEDULED = true}) end
if state == '' or LEASED[state] then
  for i = 8, #ARGV do  -- each broker's set of held tasks (an id whose task another broker holds now is skipped)
    local ids = redis.call('SRANDMEMBER', KEYS[#KEYS - #ARGV + i], SCAN)
    local held = {}
    preload(ids, {TASK})
    for _, id in ipairs(ids) do
      local t = load(id)
      if t and t.lease == ARGV[i] then held[#held + 1] = id end
    end
    unfinished(held, LEASED, SCAN)
  end
  read(function(start, stop) return redis.call('ZRANGE', HELD, start, stop) end, nil, LEASED, SCAN)
end
if state == '' then for _, key in pairs(ENDED) do newest(key) end elseif FINAL[state] then newest(ENDED[state]) end
table.sort(found, function(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end)
local answer, ids = {}, {}
for i = 1, math.min(limit, #found) do ids[i] = found[i][2] end
preload(ids, {PARAMS, OUTCOME, OWNER})
for i = 1, #ids do answer[i] = record(found[i][3]) end
return answer
"""

SCRIPTS = {
    **FLOW_SCRIPTS,
    "claim": CLAIM,
    "requeue": REQUEUE,
    "retry": RETRY,
    "expire": EXPIRE,
    "reset": RESET,
    "due": DUE,
    "next_due": NEXT_DUE,
    "reclaim": RECLAIM,
    "get": GET,
    "oldest": OLDEST,
    "list": LIST,
    **REGISTRY_SCRIPTS,
}


def source(name: str) -> str:
    """The full Lua source of the script ``name``: the shared helpers, then the script."""
    return PRELUDE + SCRIPTS[name]
