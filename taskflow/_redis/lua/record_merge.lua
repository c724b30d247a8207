-- Merge fields into a task record unless it is terminal (prepended to the result store's
-- record updates and to the broker's settle, which writes an outcome with its ack). Field
-- values are JSON text (encoded by the client), so the script never re-encodes numbers or
-- lists. ARGV from b: record key, now, ttl seconds ('' = keep), done channel, id (JSON),
-- field count, then field, value pairs (merge_width gives their number). Returns true, or
-- false (terminal: nothing written).
local function merge_record(b)
  local key, now, ttl, channel = ARGV[b], tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3]
  local expires = redis.call('HGET', key, '_x')
  if expires and tonumber(expires) <= now then
    redis.call('DEL', key)
  end
  local status = redis.call('HGET', key, 'status')
  if status and TERMINAL[status] then
    return false
  end
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'id', ARGV[b + 4])
  end
  local n = tonumber(ARGV[b + 5])
  for i = 0, n - 1 do
    redis.call('HSET', key, ARGV[b + 6 + i * 2], ARGV[b + 7 + i * 2])
  end
  if ttl ~= '' then
    local seconds = tonumber(ttl)
    redis.call('HSET', key, '_x', tostring(now + seconds))
    redis.call('PEXPIRE', key, math.max(1, math.ceil(seconds * 1000)))
  end
  status = redis.call('HGET', key, 'status')
  if status and TERMINAL[status] then
    redis.call('PUBLISH', channel, '1')
  end
  return true
end

local function merge_width(b)
  return 6 + 2 * tonumber(ARGV[b + 5])
end
