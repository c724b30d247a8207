-- Write task records that do not exist yet (the queued record written at enqueue); an
-- existing record (a worker already marked it running, or it was cancelled) is left alone.
-- ARGV: record count, then per record: key, field count, field, value pairs.
-- Returns a list of 1 (written) / 0 (existed), one per record.
local out = {}
local i = 2
for r = 1, tonumber(ARGV[1]) do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('EXISTS', key) == 0 then
    for f = 0, n - 1 do
      redis.call('HSET', key, ARGV[i + 2 + f * 2], ARGV[i + 3 + f * 2])
    end
    out[r] = 1
  else
    out[r] = 0
  end
  i = i + 2 + n * 2
end
return out
