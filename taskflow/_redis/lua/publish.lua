-- Publish all messages or none. ARGV: prefix, now, count, then per message:
-- id, queue, body, priority, eta ('' = now), max_deliveries; then, from a broker linked
-- to a result store, the queued records to create with them (what create_records takes).
-- Returns {} on success or {'full', queue, size, limit} (nothing written).
local n = tonumber(ARGV[3])
local RECORDS = 4 + n * 6

-- The refusal if `count` more messages would take queue q over its limit (nil if not).
local function over_limit(q, count)
  local limit = redis.call('HGET', P .. ':limits', q)
  if limit then
    local size = redis.call('ZCARD', qkey(q, 'ready')) + redis.call('ZCARD', qkey(q, 'sched'))
    if size + count > tonumber(limit) then
      return {'full', q, tostring(size), limit}
    end
  end
  return nil
end

-- Publishing an id again replaces the message (and fences any live delivery).
local function drop_copy(id, key, old)
  redis.call('ZREM', qkey(old, 'ready'), id)
  redis.call('ZREM', qkey(old, 'sched'), id)
  redis.call('ZREM', qkey(old, 'inflight'), id)
  redis.call('DEL', key)
end

-- Writes the message's hash; a message due later is scheduled. True if it is ready now:
-- the caller adds it to the ready set (as make_ready: status ready, no lease token,
-- scored by priority then sequence).
local function put(key, id, q, body, pri, eta, maxd)
  if eta ~= '' and tonumber(eta) > NOW then
    redis.call('HSET', key, 'b', body, 'q', q, 'p', pri, 'md', maxd, 'dc', 0, 'st', 's')
    schedule(id, q, eta)
    return false
  end
  redis.call('HSET', key, 'b', body, 'q', q, 'p', pri, 'md', maxd, 'dc', 0, 'st', 'r', 'tk', '')
  return true
end

if n == 1 then
  -- One message (a plain delay()): the same steps without the batch's tables, which cost
  -- the server about as much as the message's own calls.
  local id, q, pri = ARGV[4], ARGV[5], ARGV[7]
  local full = over_limit(q, 1)
  if full then
    return full
  end
  if ARGV[RECORDS] then
    create_records(RECORDS)
  end
  local key = mkey(id)
  local old = redis.call('HGET', key, 'q')
  if old then
    drop_copy(id, key, old)
  end
  if put(key, id, q, ARGV[6], pri, ARGV[8], ARGV[9]) then
    redis.call('ZADD', qkey(q, 'ready'), ready_score(pri), id)
    wake(q, 1)
  end
  return {}
end

local wanted = {}
for i = 0, n - 1 do
  local q = ARGV[5 + i * 6]
  wanted[q] = (wanted[q] or 0) + 1
end
for q, count in pairs(wanted) do
  local full = over_limit(q, count)
  if full then
    return full
  end
end
if ARGV[RECORDS] then
  create_records(RECORDS)
end
-- One INCRBY reserves the batch's sequence numbers, and each queue's ready messages go in
-- with one ZADD per 1,000 messages (call_chunked): per message, the script makes one call
-- (HSET) and a share of an EXISTS and a ZADD, instead of five.
local seq = redis.call('INCRBY', SEQ, n) - n
local pending = {}
local function add_pending()
  for q, pairs_ in pairs(pending) do
    call_chunked('ZADD', qkey(q, 'ready'), pairs_)
  end
  pending = {}
end
-- Ids are almost always new: one EXISTS over the batch's keys saves a call per message
-- (an id twice in the batch is looked up at its second copy).
local keys = {}
for i = 0, n - 1 do
  keys[i + 1] = mkey(ARGV[4 + i * 6])
end
local existing = call_chunked('EXISTS', nil, keys)
local woken, seen = {}, {}
for i = 0, n - 1 do
  local base = 4 + i * 6
  local id, q, body, pri = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local eta, maxd = ARGV[base + 4], ARGV[base + 5]
  local key = keys[i + 1]
  local old = (existing > 0 or seen[id]) and redis.call('HGET', key, 'q')
  seen[id] = true
  if old then
    -- An earlier copy may be in this batch's pending adds: those go in first.
    add_pending()
    drop_copy(id, key, old)
  end
  if put(key, id, q, body, pri, eta, maxd) then
    seq = seq + 1
    local list = pending[q]
    if list == nil then
      list = {}
      pending[q] = list
    end
    list[#list + 1] = (9 - tonumber(pri)) * PRIORITY_STEP + seq
    list[#list + 1] = id
    woken[q] = (woken[q] or 0) + 1
  end
end
add_pending()
for q, count in pairs(woken) do
  wake(q, count)
end
return {}
