-- Create task records that do not exist yet (the queued record written at enqueue); an
-- existing record (a worker already marked it running, or it was cancelled) is left alone.
-- Prepended to the result store's create and to the broker's publish, which creates the
-- queued records of a linked store with its messages. ARGV from b: record count, then per
-- record: key, field count, field, value pairs. Returns a list of 1 (written) / 0
-- (existed), one per record.
local function create_records(b)
  local out = {}
  local i = b + 1
  for r = 1, tonumber(ARGV[b]) do
    local key, n = ARGV[i], tonumber(ARGV[i + 1])
    if redis.call('EXISTS', key) == 0 then
      if n > 0 then
        redis.call('HSET', key, unpack(ARGV, i + 2, i + 1 + n * 2))
      end
      out[r] = 1
    else
      out[r] = 0
    end
    i = i + 2 + n * 2
  end
  return out
end
