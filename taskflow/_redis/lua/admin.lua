-- Operator actions on one queue. ARGV: prefix, now, action, queue, then extras.
-- depth -> {ready, scheduled, inflight, dead}; cancel id -> 0/1;
-- purge '1'|'0' (with scheduled) -> ids dropped;
-- replay [ids...] -> count (all dead letters when no ids are given);
-- requeue then per message: id, body, priority, max_deliveries -> ids moved;
-- discard ids... -> ids removed (dead letters deleted for good);
-- bury then per letter: id, body, reason, error, failed_at, deliveries, priority,
-- max_deliveries -> count filed (an id with a live message is left alone; the list
-- keeps the queue's dead_letter_limit, if it has one);
-- purge_batch '1'|'0' limit [record template] -> up to limit ids dropped (call again until
-- fewer come back). With a template (merge_record's arguments for an empty id: the record
-- key and done channel then end where an id goes), the linked store's record of each id
-- dropped is closed with its fields in the same step, if it exists and is not terminal;
-- purge_list '1'|'0' limit -> up to limit ids purge_batch would drop, nothing dropped;
-- purge_listed '1'|'0' id... -> those of the ids still ready (or scheduled, with '1'),
-- dropped: a purge whose store is elsewhere closes the records in between.
local action, q = ARGV[3], ARGV[4]

local function promote()
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

local function replay_one(id)
  local key = mkey(id)
  local m = redis.call('HMGET', key, 'st', 'q', 'p')
  if m[1] ~= 'd' or m[2] ~= q then
    return 0
  end
  redis.call('HDEL', key, 'rs', 'er', 'ft')
  redis.call('HSET', key, 'dc', 0)
  make_ready(id, q, m[3])
  return 1
end

if action == 'depth' then
  promote()
  return {redis.call('ZCARD', qkey(q, 'ready')), redis.call('ZCARD', qkey(q, 'sched')),
    redis.call('ZCARD', qkey(q, 'inflight')), redis.call('LLEN', qkey(q, 'dead'))}
elseif action == 'cancel' then
  local id = ARGV[5]
  local m = redis.call('HMGET', mkey(id), 'st', 'q')
  if m[1] ~= 'r' and m[1] ~= 's' then
    return 0
  end
  redis.call('ZREM', qkey(m[2], 'ready'), id)
  redis.call('ZREM', qkey(m[2], 'sched'), id)
  redis.call('DEL', mkey(id))
  return 1
elseif action == 'purge' then
  promote() -- a due message counts as ready
  local kinds = {'ready'}
  if ARGV[5] == '1' then
    kinds[2] = 'sched'
  end
  local dropped = {}
  for _, kind in ipairs(kinds) do
    local key = qkey(q, kind)
    for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      redis.call('DEL', mkey(id))
      dropped[#dropped + 1] = id
    end
    redis.call('DEL', key)
  end
  redis.call('DEL', qkey(q, 'notify'))
  return dropped
elseif action == 'requeue' then
  local dead = qkey(q, 'dead')
  local moved = {}
  for i = 5, #ARGV, 4 do
    local id, body, pri, maxd = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local key = mkey(id)
    -- Only a message that is still a dead letter of this queue moves: a second replay
    -- of the same id (or an id sent anew meanwhile) finds another state and is skipped.
    local m = redis.call('HMGET', key, 'st', 'q')
    if m[1] == 'd' and m[2] == q then
      redis.call('HDEL', key, 'rs', 'er', 'ft')
      redis.call('HSET', key, 'b', body, 'p', pri, 'md', maxd, 'dc', 0)
      -- Count 1 from the head: replays take the oldest first, so this stays O(1) per id
      -- on a long list.
      redis.call('LREM', dead, 1, id)
      make_ready(id, q, pri)
      moved[#moved + 1] = id
    end
  end
  if #moved > 0 then
    wake(q, #moved)
  end
  return moved
elseif action == 'replay' then
  local dead = qkey(q, 'dead')
  local ids = {}
  if #ARGV > 4 then
    for i = 5, #ARGV do
      ids[#ids + 1] = ARGV[i]
    end
  else
    ids = redis.call('LRANGE', dead, 0, -1)
  end
  local count = 0
  for _, id in ipairs(ids) do
    local done = replay_one(id)
    if done == 1 then
      redis.call('LREM', dead, 1, id)
      count = count + 1
    end
  end
  if count > 0 then
    wake(q, count)
  end
  return count
elseif action == 'discard' then
  local dead = qkey(q, 'dead')
  local gone = {}
  for i = 5, #ARGV do
    local id = ARGV[i]
    local m = redis.call('HMGET', mkey(id), 'st', 'q')
    if m[1] == 'd' and m[2] == q then
      redis.call('LREM', dead, 1, id)
      redis.call('DEL', mkey(id))
      gone[#gone + 1] = id
    end
  end
  return gone
elseif action == 'bury' then
  local dead = qkey(q, 'dead')
  local count = 0
  for i = 5, #ARGV, 8 do
    local id = ARGV[i]
    local key = mkey(id)
    if redis.call('EXISTS', key) == 0 then
      redis.call('HSET', key, 'b', ARGV[i + 1], 'q', q, 'st', 'd', 'rs', ARGV[i + 2],
        'ft', ARGV[i + 4], 'dc', ARGV[i + 5], 'p', ARGV[i + 6], 'md', ARGV[i + 7])
      if ARGV[i + 3] ~= '' then
        redis.call('HSET', key, 'er', ARGV[i + 3])
      end
      redis.call('RPUSH', dead, id)
      count = count + 1
    end
  end
  -- The same bound as the broker's own dead-lettering (common.lua).
  trim_dead(q, dead)
  return count
elseif action == 'purge_batch' or action == 'purge_list' then
  promote()
  local limit = tonumber(ARGV[6])
  local kinds = {'ready'}
  if ARGV[5] == '1' then
    kinds[2] = 'sched'
  end
  local dropped = {}
  local drop = action == 'purge_batch'
  for _, kind in ipairs(kinds) do
    local key = qkey(q, kind)
    local room = limit - #dropped
    if room > 0 then
      for _, id in ipairs(redis.call('ZRANGE', key, 0, room - 1)) do
        if drop then
          redis.call('ZREM', key, id)
          redis.call('DEL', mkey(id))
        end
        dropped[#dropped + 1] = id
      end
    end
  end
  if ARGV[7] and drop then
    for _, id in ipairs(dropped) do
      write_record(ARGV[7] .. id, ARGV[10] .. id, nil, 7, false)
    end
  end
  return dropped
elseif action == 'purge_listed' then
  local dropped = {}
  for i = 6, #ARGV do
    local id = ARGV[i]
    if redis.call('ZREM', qkey(q, 'ready'), id) == 1
        or (ARGV[5] == '1' and redis.call('ZREM', qkey(q, 'sched'), id) == 1) then
      redis.call('DEL', mkey(id))
      dropped[#dropped + 1] = id
    end
  end
  return dropped
elseif action == 'resume' then
  redis.call('SREM', P .. ':paused', q)
  if redis.call('ZCARD', qkey(q, 'ready')) > 0 then
    wake(q, 16)
  end
  return 1
end
return redis.error_reply('unknown admin action ' .. action)
