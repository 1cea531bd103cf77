-- Claim each job for a results part and write the part's body ahead (sink.py, ResultsSink._write): step 1 of 3.
-- KEYS: the pending parts hash, then each event's job hash
-- ARGV: the part's s3:// URI, the claim's TTL, the part's stream ids (comma-separated), then each event's JSON
-- A job already claimed by an earlier part (HSETNX results_part) is left out of this one. Returns the events kept.
local lines = {}
for i = 2, #KEYS do
  if redis.call('HSETNX', KEYS[i], 'results_part', ARGV[1]) == 1 then
    if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[2]) end
    table.insert(lines, ARGV[i + 2])
  end
end
if #lines > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], table.concat(lines, '\n') .. '\n', ARGV[1] .. '#ids', ARGV[3])
end
return #lines
