"""The Lua scripts of :class:`~zerotask.store.redis.RedisStore`: one atomic script per store operation,
each run after the helpers of :mod:`zerotask.store.redis_layout` (which says how the tasks lie in Redis).

ARGV starts with ``me`` (this broker's id, "" before attach), ``now`` (time.time() in Python: the tests
move the clock) and the channel to publish on; what follows is each script's own, as its comment says.
"""

from __future__ import annotations

from zerotask.store.redis_layout import PRELUDE
from zerotask.store.redis_registry import REGISTRY_SCRIPTS

# ARGV[4] token, ARGV[5] n, then per task: id, method, params, owner ("" or "+" .. owner), created_at, attempts,
# queue, priority, due_at ("" for none). A task due later than now is SCHEDULED, any other QUEUED.
# Answers one "1" (added) or "0" (refused: the id exists) per task. A batch sent again with the same token
# (its reply was lost, and more tasks may follow it) gets the answers it had.
ADD = r"""
local token, n = ARGV[4], tonumber(ARGV[5])
local flags = {}
local last = redis.call('GET', REPLY_ADD)
if last and string.sub(last, 1, #token + 1) == token .. '\n' then
  for i = #token + 2, #last do flags[#flags + 1] = string.sub(last, i, i) end
end
local ids, added, now = {}, 0, tonumber(NOW)
for i = #flags + 1, n do ids[#ids + 1] = ARGV[5 + (i - 1) * 9 + 1] end
preload(ids, {META})
for i = #flags + 1, n do
  local at = 5 + (i - 1) * 9
  local id = ARGV[at + 1]
  if hget(META, id) then
    flags[i] = '0'
  else
    local t = {id = id, method = ARGV[at + 2], attempts = ARGV[at + 6], seq = new_seq(), created = ARGV[at + 5],
      finished = '', lease = '', state = '', queue = ARGV[at + 7], priority = ARGV[at + 8], due = ARGV[at + 9]}
    put('h', PARAMS, id, ARGV[at + 3])
    if ARGV[at + 4] ~= '' then put('h', OWNER, id, string.sub(ARGV[at + 4], 2)) end
    put('z', LIVE, id, t.created)
    if t.due ~= '' and tonumber(t.due) > now then
      enter(t, 'SCHEDULED')
    else
      enter(t, 'QUEUED')
      added = added + 1
    end
    flags[i] = '1'
  end
end
redis.call('SET', REPLY_ADD, token .. '\n' .. table.concat(flags), 'PX', 3600000)
if added > 0 then publish('Q', {}) end
return done(table.concat(flags))
"""

# ARGV[4] token, ARGV[5] n, then the tokens of n take_many calls that raised (they may have run), then the
# number of wants, then per want: limit, the number of methods, the methods, the number of named queues, the
# queues. Answers a list of records per want: the highest priority first, then the earliest submitted.
TAKE = r"""
local doubt = {}
for i = 6, 5 + tonumber(ARGV[5]) do doubt[ARGV[i]] = true end
local last = redis.call('GET', REPLY_TAKE)
if last then
  local cut = string.find(last, '\n', 1, true)
  local token, groups = string.sub(last, 1, cut - 1), cjson.decode(string.sub(last, cut + 1))
  if token == ARGV[4] or doubt[token] then
    local answer, all = {}, {}
    for _, ids in ipairs(groups) do
      for _, id in ipairs(ids) do all[#all + 1] = id end
    end
    preload(all, {META, PARAMS, OWNER})
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
  local q = tonumber(ARGV[at + 2 + k])
  local found, chosen = {}, {}
  if limit > 0 then
    sync()  -- what earlier wants took has left the queue
    for j = at + 2, at + 1 + k do
      for i = at + 3 + k, at + 2 + k + q do
        local p = lane(ARGV[j], ARGV[i])
        for _, m in ipairs(redis.call('ZRANGEBYLEX', QUEUE, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, limit)) do
          -- 9 - priority, then the sequence, as one number (exact: under 2^53) for a quick sort
          local order = tonumber(string.sub(m, #p + 1, #p + 1)) * 2^48 + tonumber(string.sub(m, #p + 2, #p + 13), 16)
          found[#found + 1] = {order, string.sub(m, #p + 14), m}
        end
      end
    end
    table.sort(found, function(a, b) return a[1] < b[1] end)
  end
  answer[w], groups[w] = {}, {}
  for i = 1, math.min(limit, #found) do chosen[i] = found[i][2] end
  preload(chosen, {META, PARAMS, OWNER})
  for i = 1, #chosen do
    local t = load(chosen[i])
    t.member = found[i][3]
    leave(t); enter(t, 'ASSIGNED')
    answer[w][i] = record(t)
    groups[w][i] = t.id
  end
  at = at + 3 + k + q
end
for _, ids in ipairs(groups) do
  if #ids > 0 then
    redis.call('SET', REPLY_TAKE, ARGV[4] .. '\n' .. cjson.encode(groups), 'PX', 3600000)
    break
  end
end
return done(answer)
"""

# ARGV[4..] task ids. A SCHEDULED task is left alone: no node can have it.
CLAIM = r"""
local answer = {}
preload(args_from(4), {META, PARAMS, OWNER})
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
preload(args_from(4), {META})
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

# ARGV[4] token, ARGV[5] n, then per outcome: task id, state, outcome JSON. Answers "1" or "0" per outcome;
# the same call sent again (its answer was lost on the way) gets the same answers.
FINISH = r"""
local last = redis.call('GET', REPLY_FINISH)
if last and string.sub(last, 1, #ARGV[4] + 1) == ARGV[4] .. '\n' then return done(string.sub(last, #ARGV[4] + 2)) end
local flags, recorded, ids = {}, {}, {}
for i = 1, tonumber(ARGV[5]) do ids[i] = ARGV[5 + (i - 1) * 3 + 1] end
preload(ids, {META})
for i = 1, tonumber(ARGV[5]) do
  local at = 5 + (i - 1) * 3
  local t = load(ARGV[at + 1])
  if t and not FINAL[t.state] then
    leave(t)
    t.finished = NOW
    put('h', OUTCOME, t.id, ARGV[at + 3])
    if ARGV[at + 2] == 'FINISHED' then put('h', PARAMS, t.id, false) end
    enter(t, ARGV[at + 2])
    flags[i] = '1'
    recorded[#recorded + 1] = t.id
  else
    flags[i] = '0'
  end
end
if #recorded > 0 then publish('F', recorded) end
redis.call('SET', REPLY_FINISH, ARGV[4] .. '\n' .. table.concat(flags), 'PX', 3600000)
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
local n, ids = math.min(limit, #found), {}
for i = 1, n do ids[i] = found[i][2] end
preload(ids, {META})
for i = 1, n do
  local t = load(ids[i])
  leave(t)
  for _, key in ipairs({META, PARAMS, OUTCOME, OWNER}) do put('h', key, t.id, false) end
end
return done(n)
"""

# ARGV[4] task id. Answers 1 if the FAILED or REVOKED task is queued again, at the back.
RESET = r"""
local t = load(ARGV[4])
if not t or (t.state ~= 'FAILED' and t.state ~= 'REVOKED') then return done(0) end
leave(t)
put('h', OUTCOME, t.id, false)
t.seq, t.attempts, t.created, t.finished, t.due = new_seq(), '0', NOW, '', ''
put('z', LIVE, t.id, t.created)
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
preload(ids, {META})
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
# broker ids; KEYS after KEY_NAMES are their liveness keys, in the same order. Queues again, in their old
# places, up to limit tasks leased to brokers whose liveness key is gone (to "" always: a store that never
# attached holds no lease). A gone broker with nothing left is forgotten.
RECLAIM = r"""
local left, n, base, mine = tonumber(ARGV[4]), 0, #KEYS - (#ARGV - 5), ARGV[5] == '1'
for i = 6, #ARGV do
  local broker = ARGV[i]
  if left <= 0 then break end
  if broker == '' or (broker == ME and mine) or (broker ~= ME and redis.call('EXISTS', KEYS[base + i - 5]) == 0) then
    local p, ids = broker .. '|', {}
    sync()
    local members = redis.call('ZRANGEBYLEX', HELD, '[' .. p, '(' .. p .. '\255', 'LIMIT', 0, left)
    for j, m in ipairs(members) do ids[j] = string.sub(m, #p + 1) end
    preload(ids, {META})
    for j, m in ipairs(members) do
      local t = load(ids[j])
      if t and LEASED[t.state] and t.lease == broker then
        leave(t); enter(t, 'QUEUED')
        n = n + 1
      else
        put('z', HELD, m, false)
      end
    end
    if #members < left and broker ~= '' and broker ~= ME then redis.call('SREM', BROKERS, broker) end
    left = left - #members
  end
end
if n > 0 then publish('Q', {}) end
return done(n)
"""

# ARGV[4..] task ids. Answers a record, or false, per id.
GET = r"""
local answer = {}
preload(args_from(4), {META, PARAMS, OUTCOME, OWNER})
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
    local ids = {}
    for i = 1, #r, 2 do ids[#ids + 1] = r[i] end
    preload(ids, {META})
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
elseif state == 'QUEUED' or state == 'SCHEDULED' or LEASED[state] then scan(LIVE) end
table.sort(found, function(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end)
local answer, ids = {}, {}
for i = 1, math.min(limit, #found) do ids[i] = found[i][2] end
preload(ids, {PARAMS, OUTCOME, OWNER})
for i = 1, #ids do answer[i] = record(found[i][3]) end
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
