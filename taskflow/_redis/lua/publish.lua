-- Publish all messages or none. ARGV: prefix, now, count, then per message:
-- id, queue, body, priority, eta ('' = now), max_deliveries.
-- Returns {} on success or {'full', queue, size, limit}.
local n = tonumber(ARGV[3])
local wanted = {}
for i = 0, n - 1 do
  local q = ARGV[5 + i * 6]
  wanted[q] = (wanted[q] or 0) + 1
end
for q, count in pairs(wanted) do
  local limit = redis.call('HGET', P .. ':limits', q)
  if limit then
    local size = redis.call('ZCARD', qkey(q, 'ready')) + redis.call('ZCARD', qkey(q, 'sched'))
    if size + count > tonumber(limit) then
      return {'full', q, tostring(size), limit}
    end
  end
end
local woken = {}
for i = 0, n - 1 do
  local base = 4 + i * 6
  local id, q, body, pri = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local eta, maxd = ARGV[base + 4], ARGV[base + 5]
  local key = mkey(id)
  local old = redis.call('HGET', key, 'q')
  if old then
    -- Publishing an id again replaces the message (and fences any live delivery).
    redis.call('ZREM', qkey(old, 'ready'), id)
    redis.call('ZREM', qkey(old, 'sched'), id)
    redis.call('ZREM', qkey(old, 'inflight'), id)
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 'b', body, 'q', q, 'p', pri, 'md', maxd, 'dc', 0)
  if eta ~= '' and tonumber(eta) > NOW then
    redis.call('HSET', key, 'st', 's')
    schedule(id, q, eta)
  else
    make_ready(id, q, pri)
    woken[q] = (woken[q] or 0) + 1
  end
end
for q, count in pairs(woken) do
  wake(q, count)
end
return {}
