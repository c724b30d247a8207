-- Lease up to ARGV[4] ready messages from the queues ARGV[6..], in that order.
-- ARGV: prefix, now, lease seconds, max, queue count, queues..., then optionally
-- start and a record key prefix: when the caller will start every message taken at
-- once (it took at most ``start``), the task records under that prefix (the result
-- store's, on this server) are marked running here, as the worker would before the body.
-- First reclaims expired leases and promotes due scheduled messages of those queues.
-- Returns {next_due, n_dead, marks, [id, queue, body, reason, error, delivery_count] * n_dead,
--          [id, queue, body, priority, delivery_count, token] * taken}; marks has one
-- character per message taken ('r': its record was marked running; '-': not, because
-- the record is missing, expired or final, or nothing was to be marked); next_due is the
-- earliest future schedule or lease deadline ('' if none), those of the messages this
-- call leased included, so an idle caller knows when to look again; the dead ones were
-- dead-lettered by this call: 'worker_lost' (reclaimed past their delivery budget) or
-- 'undecodable' (malformed framing, see common.lua).
-- Nothing here can fail half-way: every message is checked before it is moved.
local lease = tonumber(ARGV[3])
local deadline = lease_deadline(lease) -- of every lease this call makes
local max = tonumber(ARGV[4])
local nq = tonumber(ARGV[5])
local next_due = nil
local dead = {}

local function report(id, q, reason, err, dc)
  dead[#dead + 1] = id
  dead[#dead + 1] = q
  dead[#dead + 1] = redis.call('HGET', mkey(id), 'b') or ''
  dead[#dead + 1] = reason
  dead[#dead + 1] = err
  dead[#dead + 1] = tostring(dc)
end

-- The message fields, or nil and why they cannot be used.
local function read(id, q)
  local key = mkey(id)
  local m = redis.pcall('HMGET', key, 'b', 'p', 'dc', 'md', 'q', 'st')
  if m.err then
    -- Not a hash at all: replace it with an empty dead letter under that id.
    redis.call('DEL', key)
    redis.call('HSET', key, 'q', q, 'p', 0, 'dc', 0, 'md', 1)
    return nil, 'the message key is not a hash'
  end
  if not (m[1] or m[2] or m[3] or m[4] or m[5] or m[6]) then
    return nil, nil -- gone (acked, cancelled or purged meanwhile): nothing to do
  end
  local err = framing_error(id, q, m)
  if err then
    -- Keep the dead letter listable and replayable: only valid numbers stay.
    redis.call('HSET', key, 'q', q, 'p', int_in(m[2], 0, 9) or 0, 'dc', int_in(m[3], 0) or 0,
      'md', int_in(m[4], 1) or 1)
    return nil, err
  end
  return m, nil
end

local function reject(id, q, err)
  bury(id, q, 'undecodable', 'malformed framing: ' .. err)
  report(id, q, 'undecodable', 'malformed framing: ' .. err,
    redis.call('HGET', mkey(id), 'dc') or '0')
end

-- Note the score ``due`` (a string, or nil for none) in next_due if it is the earliest.
local function note(due)
  if due ~= nil then
    due = tonumber(due)
    if next_due == nil or due < next_due then
      next_due = due
    end
  end
end

-- Remove the ids due by NOW (at most ``limit``) from the sorted set ``key`` and return
-- them; the earliest score left is noted in next_due. Nothing due (the common case)
-- costs one look at the set's first member.
local function take_due(key, limit)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] == nil or tonumber(first[2]) > NOW then
    note(first[2])
    return {}
  end
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', NOW, 'LIMIT', 0, limit)
  redis.call('ZREM', key, unpack(ids))
  note(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  return ids
end

local function reclaim(q)
  for _, id in ipairs(take_due(qkey(q, 'inflight'), 200)) do
    local m, err = read(id, q)
    if err then
      reject(id, q, err)
    elseif m and m[6] == 'i' then
      local dc = tonumber(m[3])
      if dc >= tonumber(m[4]) then
        bury(id, q, 'worker_lost', 'lease expired')
        report(id, q, 'worker_lost', 'lease expired', dc)
      else
        make_ready(id, q, m[2])
      end
    end
  end
end

local function promote(q)
  for _, id in ipairs(take_due(qkey(q, 'sched'), 1000)) do
    local m, err = read(id, q)
    if err then
      reject(id, q, err)
    elseif m then
      make_ready(id, q, m[2])
    end
  end
end

local out = {}
local taken = 0
local paused = P .. ':paused'
for i = 1, nq do
  local q = ARGV[5 + i]
  -- Each notes the earliest deadline or due time left in its set.
  reclaim(q)
  promote(q)
  local ready = qkey(q, 'ready')
  if redis.call('SISMEMBER', paused, q) == 0 then
    local emptied = false
    while taken < max do
      local want = max - taken
      local popped = redis.call('ZPOPMIN', ready, want)
      -- Fewer than asked for: the ready set is empty now (no second look, no ZCARD).
      emptied = #popped < 2 * want
      -- One INCRBY reserves a token for each message popped (one left unused by a
      -- message that is gone or rejected is never used by anybody), and one ZADD puts
      -- those leased into the inflight set: two calls a round instead of two a message.
      local popped_n = #popped / 2
      local seq = popped_n > 0 and redis.call('INCRBY', SEQ, popped_n) - popped_n or 0
      local leased = {}
      for j = 1, #popped, 2 do
        local id = popped[j]
        local m, err = read(id, q)
        if err then
          reject(id, q, err)
        elseif m then
          local dc = tonumber(m[3]) + 1
          seq = seq + 1
          local token = tostring(seq)
          redis.call('HSET', mkey(id), 'st', 'i', 'dc', dc, 'tk', token)
          leased[#leased + 1] = deadline
          leased[#leased + 1] = id
          out[#out + 1] = id
          out[#out + 1] = q
          out[#out + 1] = m[1]
          out[#out + 1] = m[2]
          out[#out + 1] = tostring(dc)
          out[#out + 1] = token
          taken = taken + 1
        end
      end
      call_chunked('ZADD', qkey(q, 'inflight'), leased)
      if emptied then
        break
      end
    end
    -- Keep the wake-up tokens honest: one left for other idle consumers while work
    -- remains, none when the queue is empty (so nobody wakes for nothing).
    local notify = qkey(q, 'notify')
    if not emptied and redis.call('ZCARD', ready) > 0 then
      if redis.call('LLEN', notify) == 0 then
        wake(q, 1)
      end
    else
      redis.call('DEL', notify)
    end
  end
end
if taken > 0 then
  note(deadline) -- what this call leased falls due then, unless renewed
end
-- Mark the records running, as ``result_update.lua`` would merge the worker's own write:
-- an expired record counts as missing (left for that script to delete), a final one is
-- left alone (the worker then finds it final and does not run the task).
local marks = ''
local start = tonumber(ARGV[6 + nq] or '0') or 0
if taken > 0 and taken <= start then
  local records = ARGV[7 + nq]
  for i = 1, #out, 6 do
    local key = records .. out[i]
    local f = redis.call('HMGET', key, 'status', '_x')
    local expired = f[2] and tonumber(f[2]) ~= nil and tonumber(f[2]) <= NOW
    if f[1] and not expired and not TERMINAL[f[1]] then
      redis.call('HSET', key, 'status', '"running"', 'started_at', NOW_TEXT)
      marks = marks .. 'r'
    else
      marks = marks .. '-'
    end
  end
end
local reply = {next_due ~= nil and tostring(next_due) or '', tostring(#dead / 6), marks}
for _, v in ipairs(dead) do
  reply[#reply + 1] = v
end
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
