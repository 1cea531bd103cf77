-- An attempt begins (publish.py, Publisher.begin); runs after publish_now.lua and publish_finished.lua.
-- KEYS: guard, job, running index, watermarks; ARGV: attempt, worker, ttl, job id, open prefix
if finished(KEYS[2], KEYS[1]) then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[2], 'duplicate_deliveries', 1) end
  return 0
end
local queue = redis.call('HGET', KEYS[2], 'queue')
if queue then
  local open = ARGV[5] .. queue
  local score = redis.call('ZSCORE', open, ARGV[4])
  if score then
    redis.call('ZREM', open, ARGV[4])
    local mark = redis.call('HGET', KEYS[4], queue)
    if (not mark) or tonumber(score) > tonumber(mark) then redis.call('HSET', KEYS[4], queue, score) end
  end
end
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('HSET', KEYS[2], 'state', 'running', 'attempts', ARGV[1], 'updated_at', now, 'worker', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'deliveries', 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
