-- Shared helpers, prepended to every broker script. ARGV[1] is the key prefix, which
-- carries a {hash tag} so all keys of one app live in one Redis Cluster slot.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local NOW_TEXT = ARGV[2]
if NOW_TEXT == 'server' then
  -- A fetch sent ahead of time (pipelined behind a blocking wait) runs later than it was
  -- sent: it takes the time when it runs, from the server's clock.
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
  NOW_TEXT = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local SEQ = P .. ':seq'

local function qkey(queue, kind)
  return P .. ':q:' .. queue .. ':' .. kind
end

local function mkey(id)
  return P .. ':m:' .. id
end

-- Strict priority (9 first), then FIFO: the sequence number breaks ties. Scores stay
-- below 2^53, so doubles hold them exactly.
local PRIORITY_STEP = 1099511627776 -- 2^40
local function ready_score(priority)
  return (9 - tonumber(priority)) * PRIORITY_STEP + redis.call('INCR', SEQ)
end

-- A lease's deadline, for the inflight set. One of 10 s or more is rounded up to a whole
-- second: Redis keeps a small sorted set (a queue's inflight set, as a rule) as a listpack,
-- which stores a whole score as an integer but a fractional one as text, parsed again by
-- every insertion that walks past it (a ZADD took 5.5 µs against 1.1 on a set of 45
-- deadlines). Up to a second later than asked, never earlier: nothing is delivered again
-- sooner, a lost delivery at most a second later; short leases (tests, tuning) stay exact.
local function lease_deadline(lease)
  local deadline = NOW + lease
  if lease >= 10 then
    return math.ceil(deadline)
  end
  return deadline
end

-- redis.call(command, [key,] values...) in as many calls as it takes, and the sum of their
-- (integer) replies: Lua unpacks at most a few thousand values at once. CHUNK is even, so
-- that pairs (ZADD's) stay together.
local CHUNK = 2000
local function call_chunked(command, key, values)
  local total = 0
  for i = 1, #values, CHUNK do
    local j = math.min(i + CHUNK - 1, #values)
    if key then
      total = total + redis.call(command, key, unpack(values, i, j))
    else
      total = total + redis.call(command, unpack(values, i, j))
    end
  end
  return total
end

local function make_ready(id, queue, priority)
  redis.call('HSET', mkey(id), 'st', 'r', 'tk', '')
  redis.call('ZADD', qkey(queue, 'ready'), ready_score(priority), id)
end

-- At most 16 tokens wait in a notify list (one per idle consumer is the point). A list
-- that holds 16 already (nobody took them: no consumer is idle) is left as it is, which
-- spares a publish while the workers are busy, or none run, its push; otherwise one
-- LPUSH pushes the tokens, and a list it creates gets its time to live, which later
-- pushes leave as it is (tokens are only hints: a fetch looks at the queue itself).
local function wake(queue, count)
  local key = qkey(queue, 'notify')
  local have = redis.call('LLEN', key)
  local n = math.min(count, 16 - have)
  if n < 1 then
    return
  end
  if n == 1 then
    redis.call('LPUSH', key, '1')
  else
    local tokens = {}
    for i = 1, n do
      tokens[i] = '1'
    end
    redis.call('LPUSH', key, unpack(tokens))
  end
  if have == 0 then
    redis.call('PEXPIRE', key, 60000)
  end
end

-- Wake idle fetchers when a delayed message becomes the earliest of its queue, so that
-- they look again at its due time instead of after a whole blocking period.
local function schedule(id, queue, due)
  local sched = qkey(queue, 'sched')
  local first = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
  redis.call('ZADD', sched, due, id)
  if first[2] == nil or tonumber(due) < tonumber(first[2]) then
    wake(queue, 1)
  end
end

-- Framing written by hand (another producer, an operator) may be malformed. Scripts
-- check it before they move a message, so that a bad one is dead-lettered on its own
-- instead of failing the script half-way (Redis does not roll a failed script back).
local function int_in(v, lo, hi)
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or n < lo or (hi ~= nil and n > hi) then
    return nil
  end
  return n
end

-- Whether s is valid UTF-8 (ids travel to Python as str). Ids are short and plain ASCII
-- in practice, which the first test settles at once.
local function utf8_ok(s)
  if not string.find(s, '[\128-\255]') then
    return true
  end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then
      len = 1
    elseif c >= 0xC2 and c <= 0xDF then
      len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else
      return false
    end
    for j = i + 1, i + len - 1 do
      local cc = string.byte(s, j)
      if cc == nil or cc < lo or cc > hi then
        return false
      end
      lo, hi = 0x80, 0xBF
    end
    i = i + len
  end
  return true
end

-- What is wrong with message id's framing (nil if nothing). m = HMGET b, p, dc, md, q.
local function framing_error(id, queue, m)
  if not utf8_ok(id) then
    return 'the message id is not UTF-8'
  elseif not m[1] then
    return 'the message has no body (field b)'
  elseif not int_in(m[2], 0, 9) then
    return 'field p (priority) is not an integer 0-9'
  elseif not int_in(m[3], 0) then
    return 'field dc (delivery count) is not a non-negative integer'
  elseif not int_in(m[4], 1) then
    return 'field md (max deliveries) is not a positive integer'
  elseif m[5] ~= queue then
    return 'field q does not name the queue the message was taken from'
  end
  return nil
end

-- A queue's dead-letter list is unbounded unless the broker that declared the queue was
-- given dead_letter_limit (kept in P:deadlimits); then the oldest letters and their bodies
-- go first.
local function trim_dead(queue, dead)
  local cap = tonumber(redis.call('HGET', P .. ':deadlimits', queue))
  if not cap then
    return
  end
  while redis.call('LLEN', dead) > cap do
    local old = redis.call('LPOP', dead)
    if redis.call('HGET', mkey(old), 'st') == 'd' then
      redis.call('DEL', mkey(old))
    end
  end
end

local function bury(id, queue, reason, err)
  redis.call('HSET', mkey(id), 'st', 'd', 'tk', '', 'rs', reason, 'er', err or '',
    'ft', NOW_TEXT)
  local dead = qkey(queue, 'dead')
  redis.call('RPUSH', dead, id)
  trim_dead(queue, dead)
end
