-- Extend the run lease if this process holds it, or take it again if it lapsed (checkpoint.py, RunLease.refresh).
-- KEYS[1]: the lease; ARGV: this process's value, TTL seconds. Returns 1, or 0 when another process holds it.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
return 0
