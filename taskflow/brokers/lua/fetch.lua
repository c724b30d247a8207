-- Lease up to ARGV[4] ready messages from the queues ARGV[6..], in that order.
-- ARGV: prefix, now, lease seconds, max, queue count, queues...
-- First reclaims expired leases and promotes due scheduled messages of those queues.
-- Returns {next_due, n_lost, [lost id, queue, body] * n_lost,
--          [id, queue, body, priority, delivery_count, token] * taken}; next_due is the
-- earliest future schedule or lease deadline ('' if none) so an idle caller knows when
-- to look again; the lost ones were dead-lettered (worker_lost) by this call's reclaim.
local lease = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local nq = tonumber(ARGV[5])
local next_due = nil
local lost = {}

local function reclaim(q)
  local inflight = qkey(q, 'inflight')
  local ids = redis.call('ZRANGEBYSCORE', inflight, '-inf', NOW, 'LIMIT', 0, 200)
  for _, id in ipairs(ids) do
    redis.call('ZREM', inflight, id)
    local m = redis.call('HMGET', mkey(id), 'dc', 'md', 'p', 'st')
    if m[4] == 'i' then
      if tonumber(m[1]) >= tonumber(m[2]) then
        bury(id, q, 'worker_lost', 'lease expired')
        lost[#lost + 1] = id
        lost[#lost + 1] = q
        lost[#lost + 1] = redis.call('HGET', mkey(id), 'b') or ''
      else
        make_ready(id, q, m[3])
      end
    end
  end
end

local function promote(q)
  local sched = qkey(q, 'sched')
  local ids = redis.call('ZRANGEBYSCORE', sched, '-inf', NOW, 'LIMIT', 0, 1000)
  for _, id in ipairs(ids) do
    redis.call('ZREM', sched, id)
    local pri = redis.call('HGET', mkey(id), 'p')
    if pri then
      make_ready(id, q, pri)
    end
  end
end

local function note_due(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local due = tonumber(first[2])
    if next_due == nil or due < next_due then
      next_due = due
    end
  end
end

local out = {}
local taken = 0
local paused = P .. ':paused'
for i = 1, nq do
  local q = ARGV[5 + i]
  reclaim(q)
  promote(q)
  note_due(qkey(q, 'sched'))
  note_due(qkey(q, 'inflight'))
  local ready = qkey(q, 'ready')
  if redis.call('SISMEMBER', paused, q) == 0 then
    if taken < max then
      local popped = redis.call('ZPOPMIN', ready, max - taken)
      for j = 1, #popped, 2 do
        local id = popped[j]
        local key = mkey(id)
        local m = redis.call('HMGET', key, 'b', 'p', 'dc')
        if m[1] then
          local dc = tonumber(m[3]) + 1
          local token = tostring(redis.call('INCR', SEQ))
          redis.call('HSET', key, 'st', 'i', 'dc', dc, 'tk', token)
          redis.call('ZADD', qkey(q, 'inflight'), NOW + lease, id)
          out[#out + 1] = id
          out[#out + 1] = q
          out[#out + 1] = m[1]
          out[#out + 1] = m[2]
          out[#out + 1] = tostring(dc)
          out[#out + 1] = token
          taken = taken + 1
        end
      end
    end
    -- Keep the wake-up tokens honest: one left for other idle consumers while work
    -- remains, none when the queue is empty (so nobody wakes for nothing).
    local notify = qkey(q, 'notify')
    if redis.call('ZCARD', ready) > 0 then
      if redis.call('LLEN', notify) == 0 then
        wake(q, 1)
      end
    else
      redis.call('DEL', notify)
    end
  end
end
local reply = {next_due ~= nil and tostring(next_due) or '', tostring(#lost / 3)}
for _, v in ipairs(lost) do
  reply[#reply + 1] = v
end
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
