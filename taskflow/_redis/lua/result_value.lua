-- Small keys with logical expiry (so a test clock and Redis agree).
-- ARGV: key, now, action, value/amount, ttl seconds ('' = none).
-- Stored as a hash {v = value, x = expires-at}.
local key, now, action, arg, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local expires = redis.call('HGET', key, 'x')
if expires and expires ~= '' and tonumber(expires) <= now then
  redis.call('DEL', key)
end
local function stamp()
  if ttl ~= '' then
    local seconds = tonumber(ttl)
    redis.call('HSET', key, 'x', tostring(now + seconds))
    redis.call('PEXPIRE', key, math.max(1, math.ceil(seconds * 1000)))
  else
    redis.call('HSET', key, 'x', '')
    redis.call('PERSIST', key)
  end
end
if action == 'get' then
  return redis.call('HGET', key, 'v')
elseif action == 'set_nx' then
  local current = redis.call('HGET', key, 'v')
  if current then
    return current
  end
  redis.call('HSET', key, 'v', arg)
  stamp()
  return nil
elseif action == 'incr' then
  local value = redis.call('HINCRBY', key, 'v', tonumber(arg))
  stamp()
  return value
end
return redis.error_reply('unknown value action ' .. action)
