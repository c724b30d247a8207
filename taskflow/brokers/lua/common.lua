-- Shared helpers, prepended to every broker script. ARGV[1] is the key prefix, which
-- carries a {hash tag} so all keys of one app live in one Redis Cluster slot.
local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local SEQ = P .. ':seq'
local DEAD_CAP = 10000

local function qkey(queue, kind)
  return P .. ':q:' .. queue .. ':' .. kind
end

local function mkey(id)
  return P .. ':m:' .. id
end

-- Strict priority (9 first), then FIFO: the sequence number breaks ties. Scores stay
-- below 2^53, so doubles hold them exactly.
local function ready_score(priority)
  return (9 - tonumber(priority)) * 1099511627776 + redis.call('INCR', SEQ)
end

local function make_ready(id, queue, priority)
  redis.call('HSET', mkey(id), 'st', 'r', 'tk', '')
  redis.call('ZADD', qkey(queue, 'ready'), ready_score(priority), id)
end

local function wake(queue, count)
  local key = qkey(queue, 'notify')
  for _ = 1, math.min(count, 16) do
    redis.call('LPUSH', key, '1')
  end
  redis.call('LTRIM', key, 0, 15)
  redis.call('PEXPIRE', key, 60000)
end

local function bury(id, queue, reason, err)
  redis.call('HSET', mkey(id), 'st', 'd', 'tk', '', 'rs', reason, 'er', err or '',
    'ft', ARGV[2])
  local dead = qkey(queue, 'dead')
  redis.call('RPUSH', dead, id)
  -- The dead-letter list owns its messages: trimming it deletes the oldest bodies.
  while redis.call('LLEN', dead) > DEAD_CAP do
    local old = redis.call('LPOP', dead)
    if redis.call('HGET', mkey(old), 'st') == 'd' then
      redis.call('DEL', mkey(old))
    end
  end
end
