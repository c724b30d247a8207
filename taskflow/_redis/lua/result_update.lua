-- Merge fields into a task record unless it is terminal. Field values are JSON text
-- (encoded by the client), so the script never re-encodes numbers or lists.
-- ARGV: record key, now, ttl seconds ('' = keep), done channel, id (JSON), field count,
-- then field, value pairs. Returns the merged record as a flat list, or nil (terminal).
local key, now, ttl, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local expires = redis.call('HGET', key, '_x')
if expires and tonumber(expires) <= now then
  redis.call('DEL', key)
end
local status = redis.call('HGET', key, 'status')
if status and TERMINAL[status] then
  return nil
end
if redis.call('EXISTS', key) == 0 then
  redis.call('HSET', key, 'id', ARGV[5])
end
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  redis.call('HSET', key, ARGV[7 + i * 2], ARGV[8 + i * 2])
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
return redis.call('HGETALL', key)
