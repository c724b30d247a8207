-- Merge fields into a task record unless it is terminal (prepended to the result store's
-- record updates, to the broker's settle, which writes an outcome with its ack, and to its
-- admin script, whose purge closes the records of the messages it drops). Field values
-- are JSON text (encoded by the client), so the script never re-encodes numbers or lists.
-- ARGV from b: record key, now, ttl seconds ('' = keep), done channel, id (JSON), field
-- count, then field, value pairs (merge_width gives their number).

-- The merge into the record at key (done channel, id as JSON), taking now, ttl and the
-- fields from ARGV at b as above (the key, channel and id there are not read). Where
-- create is false, a record that does not exist stays so. Returns true, or false
-- (terminal, or not there and not created: nothing written).
local function write_record(key, channel, id, b, create)
  local now, ttl = tonumber(ARGV[b + 1]), ARGV[b + 2]
  local m = redis.call('HMGET', key, '_x', 'status', 'id')
  if m[1] and tonumber(m[1]) <= now then
    redis.call('DEL', key)
    m = {}
  end
  if m[2] and TERMINAL[m[2]] then
    return false
  end
  if not create and not (m[2] or m[3]) then
    return false
  end
  -- One HSET for everything written (a call from a script costs more than a field): the
  -- id of a record made here, the fields, the expiry time.
  local fields = {}
  if not m[3] then
    fields[1], fields[2] = 'id', id
  end
  local final = false
  for i = b + 6, b + 5 + 2 * tonumber(ARGV[b + 5]), 2 do
    local field, value = ARGV[i], ARGV[i + 1]
    fields[#fields + 1] = field
    fields[#fields + 1] = value
    if field == 'status' then
      final = TERMINAL[value] == true
    end
  end
  local seconds = ttl ~= '' and tonumber(ttl)
  if seconds then
    fields[#fields + 1] = '_x'
    fields[#fields + 1] = tostring(now + seconds)
  end
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
  end
  if seconds then
    redis.call('PEXPIRE', key, math.max(1, math.ceil(seconds * 1000)))
  end
  -- The record was not terminal before: it is now if this write made it so.
  if final then
    redis.call('PUBLISH', channel, '1')
  end
  return true
end

-- The merge of ARGV at b into its record, made if it does not exist. Returns true, or
-- false (terminal: nothing written).
local function merge_record(b)
  return write_record(ARGV[b], ARGV[b + 3], ARGV[b + 4], b, true)
end

local function merge_width(b)
  return 6 + 2 * tonumber(ARGV[b + 5])
end
