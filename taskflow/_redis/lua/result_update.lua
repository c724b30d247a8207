-- Merge fields into task records unless they are terminal (merge_record).
-- ARGV: count, then per update what merge_record takes. Returns one entry per update: the
-- merged record as a flat list, or nil (terminal). Updates made together go in one call,
-- each applied whole before the next; an error ends the call with the updates before it
-- applied (the callers retry, and a merge applied twice leaves the same record).
local out = {}
local b = 2
for u = 1, tonumber(ARGV[1]) do
  out[u] = merge_record(b) and redis.call('HGETALL', ARGV[b])
  b = b + merge_width(b)
end
return out
