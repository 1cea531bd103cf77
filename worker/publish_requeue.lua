-- Back to its queue, untouched or for a retry (publish.py, Publisher.requeued); after publish_now.lua, publish_finished.lua.
-- KEYS: guard, job, running index; ARGV: state, job id, open prefix
if finished(KEYS[2], KEYS[1]) then return 0 end
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'state', ARGV[1], 'updated_at', now)
local queue = redis.call('HGET', KEYS[2], 'queue')
if queue then redis.call('ZADD', ARGV[3] .. queue, now, ARGV[2]) end
return 1
