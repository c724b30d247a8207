-- Start a new cycle of a terminal task record (an operator's replay): the one write a
-- terminal record accepts. The outcome moves into the JSON list in 'history', the cycle's
-- fields go, the changes are merged and the record loses its expiry (it is live again).
-- Values are JSON text (encoded by the client); the history entry is assembled as text,
-- so numbers keep their exact client encoding.
-- ARGV: record key, now, field count, then field, value pairs.
-- Returns the new record as a flat list, or nil (absent or not terminal: nothing written).
local key, now = ARGV[1], tonumber(ARGV[2])
local expires = redis.call('HGET', key, '_x')
if expires and tonumber(expires) <= now then
  redis.call('DEL', key)
  return nil
end
local status = redis.call('HGET', key, 'status')
if not (status and TERMINAL[status]) then
  return nil
end
local parts = {}
for _, name in ipairs({'status', 'error', 'attempts', 'finished_at', 'worker'}) do
  local value = redis.call('HGET', key, name) or 'null'
  parts[#parts + 1] = '"' .. name .. '":' .. value
end
local entry = '{' .. table.concat(parts, ',') .. '}'
local history = redis.call('HGET', key, 'history')
if history and history ~= '[]' and history ~= 'null' then
  history = string.sub(history, 1, -2) .. ',' .. entry .. ']'
else
  history = '[' .. entry .. ']'
end
redis.call('HDEL', key, 'result', 'error', 'started_at', 'finished_at', 'worker', '_x')
redis.call('HSET', key, 'history', history)
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call('HSET', key, ARGV[4 + i * 2], ARGV[5 + i * 2])
end
redis.call('PERSIST', key)
return redis.call('HGETALL', key)
