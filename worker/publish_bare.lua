-- The guard-key variant of publish_terminal.lua (publish.py, Publisher.publish_bare).
-- For a job whose hash Redis refuses to update (WRONGTYPE): the guard is a string key of its own.
-- KEYS: guard, stream, legacy open index, running index; ARGV: event, maxlen, ttl, stream field, job id
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[4], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', ARGV[4], ARGV[1])
redis.call('SET', KEYS[1], sid, 'EX', ARGV[3])
return sid
