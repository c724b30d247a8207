-- Cluster-wide limits (taskflow.brokers._redis_limits): a GCRA token bucket and a lease
-- set of permit holders. Time is the server's (TIME), so every worker is measured against
-- one clock whatever its own says.
--
-- KEYS[1]: the limit's key. ARGV[1]: the operation, then its arguments:
--   token   interval tolerance      -> "0" when a token was taken, else the seconds until
--                                      one is due (a string: Lua numbers become integers)
--   acquire holder limit lease      -> "0" when the permit is held, else the seconds until
--                                      the earliest permit held now expires
--   renew   lease holder...         -> per holder 1 (extended) or 0 (expired or released)
--   release holder                  -> 1 if a permit was released, else 0
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local key, op = KEYS[1], ARGV[1]

local function keep_for(seconds)
  return math.ceil(seconds * 1000) + 1000
end

if op == 'token' then
  local interval, tolerance = tonumber(ARGV[2]), tonumber(ARGV[3])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  if tat - now > tolerance then
    return tostring(tat - tolerance - now)
  end
  local next_tat = tat + interval
  redis.call('SET', key, string.format('%.6f', next_tat), 'PX', keep_for(next_tat - now))
  return '0'
end

-- Permits: a ZSET of holders scored by expiry; expired holders are dropped first.
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)

if op == 'acquire' then
  local holder, limit, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  if redis.call('ZSCORE', key, holder) or redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now + lease, holder)
    redis.call('PEXPIRE', key, keep_for(lease))
    return '0'
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tostring(math.max(tonumber(first[2]) - now, 0.001))
end

if op == 'renew' then
  local lease = tonumber(ARGV[2])
  local renewed = {}
  for i = 3, #ARGV do
    if redis.call('ZSCORE', key, ARGV[i]) then
      redis.call('ZADD', key, 'XX', now + lease, ARGV[i])
      renewed[#renewed + 1] = 1
    else
      renewed[#renewed + 1] = 0
    end
  end
  if redis.call('EXISTS', key) == 1 then
    redis.call('PEXPIRE', key, keep_for(lease))
  end
  return renewed
end

if op == 'release' then
  return redis.call('ZREM', key, ARGV[2])
end

return redis.error_reply('limits.lua: unknown operation ' .. tostring(op))
