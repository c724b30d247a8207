-- Settle deliveries, fenced by their token. ARGV: prefix, now, lease, count, then per
-- item: action, id, token, a1, a2, a3. Actions: touch, ack, requeue (a1 the task record's
-- key when the fetch marked it running, else ''), retry (a1 body, a2 delay, a3
-- max_deliveries), dead (a1 reason, a2 error). Returns 1/0 per item.
-- Items that write the task's record first (merge_record's arguments follow the item),
-- each returning {1/0 the settle held, 1/0 whether the record was written (0: it was
-- terminal)}: done (then an ack), done-dead (then dead, with a1, a2), done-retry (then
-- retry, with a1-a3, only if the record was written: a task whose record became final
-- while it ran does not come back), and record (no settle; the item is {1, 1/0}). A
-- record is written whether or not the lease still holds, as a separate write before
-- the settle would be.
local lease = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local results = {}
local woken = {}
-- The messages acked by this call (their keys by id, and their ids by queue): their
-- inflight entries and keys go at the end, in one ZREM per queue and one DEL, instead of
-- two calls a message. Nothing else runs meanwhile (a script is atomic); a later item of
-- this call for an acked message finds it gone, as it would once deleted.
local acked = {}
local acked_in = {}

local function settle(action, id, token, a1, a2, a3)
  if acked[id] then
    return 0
  end
  local key = mkey(id)
  local m = redis.call('HMGET', key, 'st', 'tk', 'q', 'p', 'dc')
  if m[1] ~= 'i' or m[2] ~= token then
    return 0
  end
  local q = m[3]
  if action == 'ack' then
    acked[id] = key
    local ids = acked_in[q]
    if ids == nil then
      ids = {}
      acked_in[q] = ids
    end
    ids[#ids + 1] = id
    return 1
  end
  local inflight = qkey(q, 'inflight')
  if action == 'touch' then
    redis.call('ZADD', inflight, lease_deadline(lease), id)
    return 1
  end
  redis.call('ZREM', inflight, id)
  if action == 'requeue' then
    -- An unstarted message goes back without spending a delivery. (Fields were checked
    -- when it was fetched; the defaults only keep a hand-edited hash from failing here.)
    redis.call('HSET', key, 'dc', math.max(0, (int_in(m[5], 0) or 1) - 1))
    make_ready(id, q, int_in(m[4], 0, 9) or 0)
    woken[q] = true
    -- The fetch marked its record running: it waits in its queue again.
    if a1 ~= '' and redis.call('HGET', a1, 'status') == '"running"' then
      redis.call('HSET', a1, 'status', '"queued"')
    end
  elseif action == 'retry' then
    redis.call('HSET', key, 'b', a1, 'dc', 0, 'md', int_in(a3, 1) or 1, 'tk', '')
    local delay = tonumber(a2) or 0
    if delay > 0 then
      redis.call('HSET', key, 'st', 's')
      schedule(id, q, NOW + delay)
    else
      make_ready(id, q, int_in(m[4], 0, 9) or 0)
      woken[q] = true
    end
  else
    bury(id, q, a1, a2)
  end
  return 1
end

local AFTER_RECORD = {done = 'ack', ['done-dead'] = 'dead', ['done-retry'] = 'retry',
  record = false}
local b = 5
for i = 1, n do
  local action = ARGV[b]
  local after = AFTER_RECORD[action]
  if after ~= nil then
    local written = merge_record(b + 6)
    local ok = 1
    if after == 'retry' and not written then
      ok = 0
    elseif after then
      ok = settle(after, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5])
    end
    results[i] = {ok, written and 1 or 0}
    b = b + 6 + merge_width(b + 6)
  else
    results[i] = settle(action, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4],
      ARGV[b + 5])
    b = b + 6
  end
end
for q, ids in pairs(acked_in) do
  call_chunked('ZREM', qkey(q, 'inflight'), ids)
end
local acked_keys = {}
for _, key in pairs(acked) do
  acked_keys[#acked_keys + 1] = key
end
call_chunked('DEL', nil, acked_keys)
for q, _ in pairs(woken) do
  wake(q, 1)
end
return results
